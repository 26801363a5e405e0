"""Image features for distribution metrics: the FID Inception network, CLIP's image tower, DINOv2's CLS token.

Every extractor takes uint8 images (B, 3, H, W) in 0..255 and returns fp32 features (B, D). Each is built
once per run, frozen, and runs in fp32 outside autocast: Fréchet distances take square roots of
covariance products, where bf16's 8-bit mantissa would dominate the result.
"""

import hashlib
import json
from pathlib import Path

import torch
from transformers import AutoImageProcessor, Dinov2Model

from ldm_lightning.errors import UserError, first_line
from ldm_lightning.evaluation.clip_score import FeatureCLIP, TruncatingProcessor
from ldm_lightning.locations import file_stamp

DEFAULT_DINOV2 = "facebook/dinov2-large"  # ViT-L/14, the encoder Stein et al. 2023 recommend
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_PICKLE_URL = (
    "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl"
)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


class InceptionFeatures(torch.nn.Module):
    """The FID Inception-v3 (TensorFlow's 2015-12-05 weights) as TorchScript: 2048-d pool3 features.

    The network converts uint8 to float and resizes to 299×299 itself, bilinearly as TensorFlow 1 did,
    without antialiasing (what published FIDs used; Parmar et al. 2022 show it aliases when downsampling).
    """

    resize = "inception: bilinear to 299x299 inside the network (TensorFlow-1 compatible, no antialiasing)"

    def __init__(self, path: str | Path):
        super().__init__()
        self.net = torch.jit.load(str(path), map_location="cpu").eval()
        self.identity = _digest(["inception", file_stamp(path)])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images, return_features=True).float()


class ClipImageFeatures(torch.nn.Module):
    """CLIP's projected image embeddings, preprocessed by the CLIP's own processor (as CLIPScore does)."""

    def __init__(self, clip: tuple[FeatureCLIP, TruncatingProcessor], name: str, folder: str | Path):
        super().__init__()
        self.model, self.processor = clip[0], clip[1].processor
        self.resize = f"clip: its image processor ({_processor_words(self.processor.image_processor)})"
        self.identity = _digest(["clip", name, file_stamp(folder), self.processor.image_processor.to_dict()])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixel_values = self.processor(images=[i.cpu() for i in images], return_tensors="pt")["pixel_values"]
        return self.model.get_image_features(pixel_values.to(images.device)).float()


class Dinov2Features(torch.nn.Module):
    """DINOv2's layer-normalised CLS token (`pooler_output`), preprocessed by the model's own processor."""

    def __init__(self, name_or_path: str):
        super().__init__()
        try:
            self.model = Dinov2Model.from_pretrained(name_or_path).eval().requires_grad_(False)
            self.processor = AutoImageProcessor.from_pretrained(name_or_path)
        except (OSError, ValueError) as err:
            raise UserError(
                f"model.metrics: FDDinov2.model: could not load DINOv2 {name_or_path!r} (needed by fd_dinov2): "
                f"{first_line(err)}; download it on a connected machine "
                f"(hf download {DEFAULT_DINOV2} --local-dir dinov2-large) and pass the folder"
            ) from None
        self.resize = f"dinov2: its image processor ({_processor_words(self.processor)})"
        self.identity = _digest(["dinov2", name_or_path, file_stamp(name_or_path), self.processor.to_dict()])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixel_values = self.processor(images=[i.cpu() for i in images], return_tensors="pt")["pixel_values"]
        return self.model(pixel_values=pixel_values.to(images.device)).pooler_output.float()


def _processor_words(processor) -> str:
    config = processor.to_dict()
    resample = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}.get(config.get("resample"), "?")
    return f"{resample} resize to {config.get('size')}, crop {config.get('crop_size')}"


def load_inception(path: str | None) -> InceptionFeatures:
    """The FID Inception from a local TorchScript file, or one clear error saying where to get it."""
    where = (
        f"download {INCEPTION_FILE} (TorchScript, used by StyleGAN2-ADA, clean-fid and EDM) from {INCEPTION_URL} "
        f"(the pickle at {INCEPTION_PICKLE_URL} does not load without the StyleGAN code) and pass "
        "--model.metrics+=FID --model.metrics.inception_weights PATH (KID likewise)"
    )
    if not path:
        raise UserError(f"model.metrics: FID.inception_weights: fid and kid need the FID Inception network; {where}")
    if not Path(path).is_file():
        raise UserError(f"model.metrics: FID.inception_weights: no file at {path!r}; {where}")
    try:
        return InceptionFeatures(path)
    except RuntimeError as err:
        # torch's own message runs on for sentences about corrupted checkpoints; its first sentence says it.
        first = first_line(err).split(". ")[0]
        raise UserError(
            f"model.metrics: FID.inception_weights: {path!r} is not a TorchScript file ({first}); {where}"
        ) from None


def extract(extractors: dict[str, torch.nn.Module], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every extractor's features of uint8 `images`, fp32, without autograd or autocast, on the CPU."""
    device_type = images.device.type
    with torch.no_grad(), torch.autocast(device_type, enabled=False):
        return {name: net(images).cpu() for name, net in extractors.items()}
