"""The pixel judge as a GenEval detector and colour classifier, for GenEval-format suites on the embedded model.

Each foreground component (8-connected, brighter than the judge's threshold) is one object: its
class is the judge's shape, its box and mask the component's, its confidence 1 (the judge has no
graded belief). Colour is the judge's palette colour of the object alone; the palette's cyan is not
among GenEval's ten colours, so prompts never ask for it.
"""

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from ldm_lightning.evaluation.geneval import Detection
from ldm_lightning.shapes.judge import FOREGROUND_MIN, judge

MIN_PIXELS = 6  # smaller specks are noise, not shapes (a small shape covers about 200 pixels at 64²)


def _alone(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with everything outside `mask` (dilated by a pixel, to keep anti-aliased edges) set to black."""
    keep = ndimage.binary_dilation(mask, structure=np.ones((3, 3), dtype=bool))
    return np.where(keep[..., None], image, 0).astype(np.uint8)


def image_detections(image: np.ndarray) -> list[Detection]:
    """One H×W×3 uint8 image's shapes as detections."""
    labels, count = ndimage.label(image.max(axis=2) > FOREGROUND_MIN, structure=np.ones((3, 3), dtype=bool))
    found = []
    for index in range(1, count + 1):
        mask = labels == index
        if mask.sum() < MIN_PIXELS:
            continue
        rows, cols = np.nonzero(mask)
        box = (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))
        found.append(Detection(judge(_alone(image, mask)).shape, 1.0, box, mask))
    return found


def judge_detections(images: torch.Tensor) -> list[list[Detection]]:
    """Detections of uint8 images (B, 3, H, W), one list per image."""
    return [image_detections(i.permute(1, 2, 0).cpu().numpy()) for i in images]


def judge_colours(image: np.ndarray, objects: Sequence[Detection], name: str) -> list[str]:
    """The judge's colour of each object, seen alone (GenEval's colour-classifier signature; `name` is unused)."""
    return [judge(_alone(image, obj.mask)).colour for obj in objects]
