"""CLIPScore per image with torchmetrics (Hessel et al. 2021: 100 · cos(image, text), floored at 0 per image).

torchmetrics floors the mean of each call at 0; each call here scores one image, so every image's score
is floored, and a run's mean is the mean of floored scores.

The adapter below exists for two gaps of torchmetrics 1.9.0; delete it when torchmetrics > 1.9.0 is
the floor and a CLIP can be passed as a hub id or folder directly:
- with transformers 5, `get_image_features`/`get_text_features` return output objects instead of
  tensors, and every update fails (fixed upstream by torchmetrics PR #3408, not yet released);
- local CLIP folders are refused unless their path contains "openai".
It also truncates prompts the CLIP way, keeping the end-of-text token (torchmetrics#2883 cuts the
ids instead, dropping it, and scores fall from ~26 to ~17).
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ldm_lightning.errors import UserError, first_line
from ldm_lightning.generation.components import ASSETS
from ldm_lightning.locations import is_local

if TYPE_CHECKING:
    from transformers import CLIPModel

DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # the family of SD v1.4's own text encoder
EMBEDDED_CLIP = {"tiny-clip": ASSETS / "tiny-clip"}


def feature_tensor(out: Any) -> torch.Tensor:
    """The embeddings a CLIPModel feature method returned: transformers 4.x returns them as a tensor,
    transformers 5 as the `pooler_output` of an output object."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class FeatureCLIP(torch.nn.Module):
    """A CLIPModel whose feature methods return the projected embeddings as tensors."""

    def __init__(self, model: "CLIPModel"):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return feature_tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return feature_tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


class TruncatingProcessor:
    """A CLIP processor that truncates text to the model's context, end-of-text token kept."""

    def __init__(self, processor, max_length: int):
        self.processor = processor
        self.max_length = max_length

    def __call__(self, text=None, images=None, **kwargs):
        if text is not None:
            kwargs.update(truncation=True, max_length=self.max_length)
        return self.processor(text=text, images=images, **kwargs)


def clip_source(name_or_path: str) -> str:
    """Where a CLIP name points: the embedded folder for "tiny-clip", else the name itself."""
    return str(EMBEDDED_CLIP.get(name_or_path, name_or_path))


def load_clip(name_or_path: str) -> tuple[FeatureCLIP, TruncatingProcessor]:
    """A frozen CLIP and its processor from a hub id, a local folder, or the embedded "tiny-clip"."""
    from transformers import AutoProcessor, CLIPModel  # only `test` scores; `predict` starts without it

    source = clip_source(name_or_path)
    key = "model.metrics: ClipScore.model"
    local = is_local(source)
    if local and not Path(source).expanduser().is_dir():
        raise UserError(f"{key}: {source}: no such folder; give the path of a CLIP folder (config, weights, processor)")
    source = str(Path(source).expanduser()) if local else source
    try:
        model = CLIPModel.from_pretrained(source).eval().requires_grad_(False)
        processor = AutoProcessor.from_pretrained(source)
    except Exception as err:  # the hub, safetensors and the processors each raise their own kinds
        first = first_line(err)
        advice = (
            "check that the folder holds a complete CLIP (config.json, weights, tokenizer and image processor)"
            if local
            else "download it on a connected machine (hf download openai/clip-vit-large-patch14 --local-dir "
            "clip-l) and pass the folder, or set HF_HUB_OFFLINE=1 with a copied cache"
        )
        raise UserError(f"{key}: could not load CLIP {name_or_path!r} ({first}); {advice}") from None
    return FeatureCLIP(model), TruncatingProcessor(processor, model.config.text_config.max_position_embeddings)


def score_images(
    images: torch.Tensor, prompts: list[str], clip: tuple[FeatureCLIP, TruncatingProcessor]
) -> list[float]:
    """CLIPScore of each uint8 (B, 3, H, W) image against its prompt, one torchmetrics call per image (so each
    score is floored at 0)."""
    from torchmetrics.functional.multimodal import clip_score

    if images.dtype != torch.uint8:
        # torchmetrics rescales float input as if it were 0..255 (a score of 0.40 instead of 10.04).
        raise TypeError("score_images expects uint8 images in 0..255")
    with torch.no_grad():  # the functional metric keeps autograd alive otherwise
        return [float(clip_score(img, text, model_name_or_path=lambda: clip)) for img, text in zip(images, prompts)]
