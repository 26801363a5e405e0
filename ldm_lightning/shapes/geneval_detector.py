"""The pixel judge as a GenEval detector and colour classifier, for GenEval-format suites on the embedded model.

Each object the judge finds (``judge.find_objects``: an 8-connected foreground component) is one
detection: its class the judge's shape, its box and mask the component's, its confidence 1 (the judge
has no graded belief). Colour is the judge's palette colour of the object alone; the palette's cyan is
not among GenEval's ten colours, so prompts never ask for it.
"""

from collections.abc import Sequence

import numpy as np
import torch

from ldm_lightning.evaluation.geneval import Detection
from ldm_lightning.shapes.judge import alone, find_objects, judge


def image_detections(image: np.ndarray) -> list[Detection]:
    """One H×W×3 uint8 image's shapes as detections."""
    return [Detection(obj.shape, 1.0, obj.box, obj.mask) for obj in find_objects(image)]


def judge_detections(images: torch.Tensor) -> list[list[Detection]]:
    """Detections of uint8 images (B, 3, H, W), one list per image."""
    return [image_detections(i.permute(1, 2, 0).cpu().numpy()) for i in images]


def judge_colours(image: np.ndarray, objects: Sequence[Detection], name: str) -> list[str]:
    """The judge's colour of each object, seen alone (GenEval's colour-classifier signature; `name` is unused)."""
    return [judge(alone(image, obj.mask)).colour for obj in objects]
