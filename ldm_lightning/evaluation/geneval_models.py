"""The networks behind GenEval's rules: an object detector and a zero-shot CLIP colour classifier.

- `Mask2FormerDetector`: transformers' `Mask2FormerForUniversalSegmentation` (e.g.
  facebook/mask2former-swin-small-coco-instance). GenEval used mmdet's Mask2Former Swin-S COCO
  checkpoint; the transformers conversion is the same architecture and training, not the same file,
  so published GenEval numbers are a guide rather than a target.
- `ClipColourClassifier`: GenEval's colour step, CLIP ViT-L/14 choosing among ten colours with three
  prompt templates averaged (as `clip_benchmark`'s zero-shot classifier builds them).
- `load_detector("shapes-judge")`: the embedded model's pixel judge, for its GenEval-format suite;
  imported only when chosen, so the core does not depend on the embedded world.
"""

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ldm_lightning.errors import UserError
from ldm_lightning.evaluation.geneval import COLORS, ColourClassifier, Detection, object_crops
from ldm_lightning.evaluation.preference import (
    AESTHETIC_CLIP,
    PreferenceCLIP,
    frozen,
    hub_hint,
    image_embeddings,
    load_or_explain,
    load_processor,
    text_embeddings,
)

# COCO's 80 detection classes in the contiguous order of COCO-trained detectors, named as GenEval's
# object_names.txt names them (mouse, remote and keyboard carry "computer" / "tv" there).
COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
# GenEval's detector input: its mmdet config's test pipeline (mask2former_r50_lsj_8x2_50e_coco.py, inherited by
# the Swin-S config it names) resizes keeping the aspect ratio to fit (1333, 800), then pads to a multiple of 32.
TEST_SCALE = (1333, 800)
SIZE_DIVISOR = 32
COLOUR_TEMPLATES = ("a photo of a {c} {name}", "a photo of a {c}-colored {name}", "a photo of a {c} object")

# A detector: uint8 images (B, 3, H, W) -> each image's detections.
Detector = Callable[[torch.Tensor], list[list[Detection]]]


def detector_input_size(height: int, width: int, scale: tuple[int, int] = TEST_SCALE) -> tuple[int, int]:
    """(height, width) at which GenEval's detector sees an image: mmcv's `rescale_size` for `Resize(keep_ratio=True)`,
    the largest factor that keeps the long side within max(scale) and the short side within min(scale), each
    side rounded half up (a 512² image: 800²)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def detector_pixels(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 (B, 3, H, W) images as GenEval's detector gets them, and their size before padding.

    As mmdet's test pipeline: resized to `detector_input_size` bilinearly without antialiasing (cv2's
    INTER_LINEAR) and rounded back to 8 bits (cv2 resizes uint8 to uint8), normalised with `mean` and `std`
    (in 0..1 units, as transformers' processors store them), padded at the bottom and right with 0 to a
    multiple of 32.
    """
    size = detector_input_size(*images.shape[-2:])
    resized = torch.nn.functional.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)
    resized = resized.round().clamp(0, 255) / 255
    pixels = (resized - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    pad_h, pad_w = (-size[0]) % SIZE_DIVISOR, (-size[1]) % SIZE_DIVISOR
    return torch.nn.functional.pad(pixels, (0, pad_w, 0, pad_h), value=0.0), size


class Mask2FormerDetector:
    """Instance detections from a Mask2Former: the top-k (query, class) pairs, masks, and boxes around the masks."""

    def __init__(self, name_or_path: str = DEFAULT_DETECTOR, top_k: int = 100):
        """
        Args:
            name_or_path: hub id or folder of a `Mask2FormerForUniversalSegmentation` with its image processor.
            top_k: detections kept per image before GenEval's thresholds (mmdet's max_per_image).
        """
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        key, hint = "model.metrics: GenEval.detector", hub_hint(DEFAULT_DETECTOR)
        model = load_or_explain(Mask2FormerForUniversalSegmentation, name_or_path, key, "Mask2Former", hint)
        self.model = frozen(model)
        self.processor = load_or_explain(AutoImageProcessor, name_or_path, key, "its image processor", hint)
        labels = self.model.config.num_labels
        # Class indices follow COCO's contiguous order; names come from GenEval's list when the model has its 80.
        own = tuple(self.model.config.id2label[i] for i in range(labels))
        self.names = COCO_NAMES if labels == len(COCO_NAMES) else own
        self.top_k = top_k

    def __call__(self, images: torch.Tensor) -> list[list[Detection]]:
        """Each image's detections, the model fed the images at GenEval's size (`detector_pixels`), not the
        processor's (384 on the short side for facebook's checkpoints)."""
        device = next(self.model.parameters()).device
        mean, std = tuple(self.processor.image_mean), tuple(self.processor.image_std)
        pixels, resized = detector_pixels(images.cpu(), mean, std)
        pixels = pixels.to(device, torch.float32)
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            out = self.model(pixel_values=pixels)
        return [
            self._detections(classes, masks, pixels.shape[-2:], resized, tuple(images.shape[-2:]))
            for classes, masks in zip(out.class_queries_logits, out.masks_queries_logits)
        ]

    @staticmethod
    def input_size(height: int, width: int) -> str:
        """The size (H×W, before padding) at which an image of this size is detected, for the results."""
        return "{}x{}".format(*detector_input_size(height, width))

    def _detections(
        self, classes, masks, padded: tuple[int, int], resized: tuple[int, int], size: tuple[int, int]
    ) -> list[Detection]:
        # Mask2Former's instance inference (Cheng et al. 2022, as in mmdet's head): class probabilities
        # without the "no object" column, top-k over all (query, class) pairs, each scored by its class
        # probability times the mean mask probability inside its binary mask. Masks as mmdet's test: to the
        # padded input size, the padding cut off, then to the image's own size.
        probs = classes.float().softmax(-1)[:, :-1]
        k = min(self.top_k, probs.numel())
        scores, flat = probs.flatten().topk(k)
        query, label = flat // probs.shape[1], flat % probs.shape[1]
        logits = torch.nn.functional.interpolate(masks[query][None].float(), size=padded, mode="bilinear")
        logits = logits[..., : resized[0], : resized[1]]
        logits = torch.nn.functional.interpolate(logits, size=size, mode="bilinear")[0]
        soft = logits.sigmoid()
        binary = soft > 0.5
        mask_scores = (soft * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        found = []
        for score, name, mask in zip((scores * mask_scores).tolist(), label.tolist(), binary.cpu().numpy()):
            rows, cols = np.nonzero(mask)
            if len(rows):  # an empty mask has no box (mmdet's mask2bbox gives zeros; such objects cannot be judged)
                box = (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))
                found.append(Detection(self.names[name], score, box, mask))
        return found


class ClipColourClassifier:
    """Zero-shot colour of each object crop: CLIP's closest colour, templates averaged per colour, cached per class."""

    def __init__(self, clip: PreferenceCLIP):
        """
        Args:
            clip: a CLIP and its processor (GenEval: OpenAI's ViT-L/14).
        """
        self.clip = clip
        self._classifiers: dict[str, torch.Tensor] = {}

    def classifier(self, name: str) -> torch.Tensor:
        """(colours, D) unit text embeddings: each colour's three templates embedded, averaged and renormalised."""
        if name not in self._classifiers:
            texts = [t.format(c=c, name=name) for c in COLORS for t in COLOUR_TEMPLATES]
            embedded = text_embeddings(self.clip, texts).view(len(COLORS), len(COLOUR_TEMPLATES), -1).mean(1)
            self._classifiers[name] = torch.nn.functional.normalize(embedded, dim=-1)
        return self._classifiers[name]

    def __call__(self, image: np.ndarray, objects: Sequence[Detection], name: str) -> list[str]:
        if not objects:
            return []
        crops = [torch.from_numpy(np.array(c)).permute(2, 0, 1) for c in object_crops(image, objects)]
        # One crop at a time: crops differ in size, and the processor resizes each to the CLIP's input.
        features = torch.cat([image_embeddings(self.clip, c[None]) for c in crops])
        best = (features @ self.classifier(name).to(features.device).T).argmax(-1)
        return [COLORS[i] for i in best.tolist()]


def load_colour_classifier(name_or_path: str = AESTHETIC_CLIP, model=None) -> ColourClassifier:
    """GenEval's colour classifier: "shapes-judge" (the pixel judge's colours) or a CLIP hub id/folder (ViT-L/14);
    `model`: that CLIP's `CLIPModel` when another metric loaded it already."""
    from transformers import CLIPModel

    if name_or_path == "shapes-judge":
        from ldm_lightning.shapes.geneval_detector import judge_colours

        return judge_colours

    key, hint = "model.metrics: GenEval.clip", hub_hint(AESTHETIC_CLIP)
    if model is None:
        model = load_or_explain(CLIPModel, name_or_path, key, "CLIP", hint)
    return ClipColourClassifier(PreferenceCLIP(frozen(model), load_processor([name_or_path], key, hint)))


def detector_input(detect: Detector, height: int, width: int) -> str:
    """The size (H×W) at which `detect` sees an image of this size: GenEval's for a Mask2Former, the image's own
    for the embedded model's pixel judge."""
    return detect.input_size(height, width) if isinstance(detect, Mask2FormerDetector) else f"{height}x{width}"


def load_detector(name_or_path: str) -> Detector:
    """A detector by configuration: "shapes-judge" (the embedded model's pixel judge) or a Mask2Former hub id/folder."""
    if name_or_path == "shapes-judge":
        from ldm_lightning.shapes.geneval_detector import judge_detections

        return judge_detections
    if not name_or_path:
        raise UserError(
            f"model.metrics: GenEval.detector: empty; give a Mask2Former hub id or folder ({DEFAULT_DETECTOR})"
        )
    return Mask2FormerDetector(name_or_path)


def networks_of(detector: Detector, colours: ColourClassifier) -> list[torch.nn.Module]:
    """The networks behind a detector and a colour classifier (none for the embedded pixel judge)."""
    found = []
    if isinstance(detector, Mask2FormerDetector):
        found.append(detector.model)
    if isinstance(colours, ClipColourClassifier):
        found.append(colours.clip.model)
    return found
