"""Human-preference scores per image: PickScore, HPS v2 / v2.1 and the LAION aesthetic predictor.

Each score is a pure function of uint8 images (B, 3, H, W) in 0..255 (and, where it depends on the
text, their prompts) and a scorer loaded once per process. Scorers stay in fp32 and run outside
autocast: they are small beside the generator, and their published numbers were taken at full
precision or under fp16 autocast on GPUs, never bf16.

- PickScore (Kirstain et al. 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic; the authors' score is
  `logit_scale.exp() · cos(image, text)` (about 20-23 for SD-class images).
- HPS v2 / v2.1 (Wu et al. 2023): an OpenCLIP ViT-H-14 fine-tuned on HPD v2; its benchmark reports
  `100 · cos(image, text)` (SD v1.4 averages 26.95 with HPS v2.0 and 25.35 with v2.1, HPSv2's README), so a
  value means something only with its version (`hpsv2_version`). Images go through HPS v2's own
  transform (resize the longer side, pad to a square), not the CLIP processor's centre crop. Loaded into
  transformers' `CLIPModel` through `openclip_keys.py`, without `open_clip_torch`.
- LAION aesthetic predictor v2 (Schuhmann 2022, "improved-aesthetic-predictor"): a purely linear
  MLP (no activations; dropout only in training) on L2-normalised CLIP ViT-L/14 image embeddings,
  trained on SAC + LAION-Logos + AVA ratings (1-10).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ldm_lightning.errors import UserError, first_line
from ldm_lightning.evaluation.clip_score import feature_tensor
from ldm_lightning.evaluation.openclip_keys import openclip_to_transformers, strip_prefix
from ldm_lightning.locations import is_local

DEFAULT_PICK_SCORE = "yuvalkirstain/PickScore_v1"
VIT_H_14 = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # PickScore's processor; HPS v2's architecture and processor
AESTHETIC_CLIP = "openai/clip-vit-large-patch14"  # the ViT-L/14 the predictor was trained on
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_DOWNLOAD = (
    f"wget https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/{AESTHETIC_FILE}"
)
HPSV2_FILE = "HPS_v2.1_compressed.pt"
HPSV2_DOWNLOAD = f"hf download xswu/HPSv2 {HPSV2_FILE} --local-dir ."


@dataclass(frozen=True)
class PreferenceCLIP:
    """A frozen fp32 transformers `CLIPModel` and the processor that prepares its images and text."""

    model: Any  # transformers.CLIPModel, imported lazily
    processor: Any  # transformers.CLIPProcessor


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _check_uint8(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise TypeError(f"expected uint8 images (B, 3, H, W) in 0..255, got {images.dtype} {tuple(images.shape)}")


def image_embeddings(clip: PreferenceCLIP, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised fp32 image embeddings of uint8 (B, 3, H, W) images, preprocessed by the CLIP's own processor."""
    _check_uint8(images)
    return pixel_embeddings(clip, clip.processor(images=[i.cpu() for i in images], return_tensors="pt")["pixel_values"])


def pixel_embeddings(clip: PreferenceCLIP, pixels: torch.Tensor) -> torch.Tensor:
    """L2-normalised fp32 image embeddings of images already preprocessed for the CLIP (B, 3, S, S)."""
    device = _device(clip.model)
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        features = feature_tensor(clip.model.get_image_features(pixel_values=pixels.to(device, torch.float32))).float()
    return torch.nn.functional.normalize(features, dim=-1)


def text_embeddings(clip: PreferenceCLIP, prompts: list[str]) -> torch.Tensor:
    """L2-normalised fp32 text embeddings, prompts truncated to the model's context (end-of-text token kept)."""
    device = _device(clip.model)
    max_length = clip.model.config.text_config.max_position_embeddings
    tokens = clip.processor(
        text=list(prompts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        out = clip.model.get_text_features(
            input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
        )
    return torch.nn.functional.normalize(feature_tensor(out).float(), dim=-1)


def _cosines(
    clip: PreferenceCLIP, images: torch.Tensor, prompts: list[str], image_features: torch.Tensor | None = None
) -> torch.Tensor:
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    image_features = image_embeddings(clip, images) if image_features is None else image_features
    return (image_features * text_embeddings(clip, prompts)).sum(dim=-1)


def pick_score(images: torch.Tensor, prompts: list[str], clip: PreferenceCLIP) -> list[float]:
    """PickScore of each image against its prompt: `logit_scale.exp() · cos` (Kirstain et al. 2023, their README)."""
    scale = clip.model.logit_scale.detach().float().exp().cpu()
    return (scale * _cosines(clip, images, prompts).cpu()).tolist()


def hpsv2_pixels(images: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """HPS v2's own image transform: the `preprocess_val` its `img_score.py` scores with (OpenCLIP's
    `image_transform(..., resize_longest_max=True)` with HPSv2's `ResizeMaxSize`), on uint8 (B, 3, H, W) images.

    To floats in [0, 1]; resized as a tensor (bicubic, antialiased: torchvision >= 0.17's default for
    tensors) so that the longer side is `size`, each side rounded; padded with zeros (black), centred, to a
    `size` square; normalised. Nothing is cropped, unlike a CLIP processor's resize and centre crop, so a
    non-square image is scored whole. (HPS v2 skips resize and pad when the longer side is already `size`;
    it pads here too, so such an image still reaches the ViT as a square.)
    """
    _check_uint8(images)
    pixels = images.float() / 255
    height, width = pixels.shape[-2:]
    scale = size / max(height, width)
    if scale != 1.0:
        height, width = round(height * scale), round(width * scale)
        pixels = F.interpolate(pixels, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    pad_h, pad_w = size - height, size - width
    pixels = F.pad(pixels, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def hpsv2(images: torch.Tensor, prompts: list[str], clip: PreferenceCLIP) -> list[float]:
    """HPS v2 of each image against its prompt on its benchmark's scale: `100 · cos` (hpsv2/evaluation.py),
    the images prepared by HPS v2's own transform (`hpsv2_pixels`), the text by the CLIP tokenizer."""
    processor, size = clip.processor.image_processor, clip.model.config.vision_config.image_size
    pixels = hpsv2_pixels(images.cpu(), size, tuple(processor.image_mean), tuple(processor.image_std))
    return (100 * _cosines(clip, images, prompts, pixel_embeddings(clip, pixels)).cpu()).tolist()


HPSV2_VERSIONS = {"HPS_v2_compressed.pt": "v2.0", "HPS_v2.1_compressed.pt": "v2.1"}  # hpsv2/utils.py's file names


def hpsv2_version(checkpoint: str | None) -> str:
    """Which HPS release a checkpoint file is, by its published name: "v2.0", "v2.1", or "unknown"."""
    return HPSV2_VERSIONS.get(Path(checkpoint).name, "unknown") if checkpoint else "unknown"


class AestheticMLP(torch.nn.Module):
    """The LAION aesthetic predictor's head; module indices match its published state dict (layers.0 … layers.7)."""

    def __init__(self, input_size: int = 768):
        """
        Args:
            input_size: CLIP embedding width (768 for ViT-L/14).
        """
        super().__init__()
        # No activations between the layers: the published model is linear (its ReLUs are commented out).
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


@dataclass(frozen=True)
class AestheticScorer:
    """CLIP ViT-L/14 and the aesthetic head on its normalised image embeddings."""

    clip: PreferenceCLIP
    head: AestheticMLP


def aesthetic(images: torch.Tensor, scorer: AestheticScorer) -> list[float]:
    """LAION aesthetic score (about 1-10) of each image: the head on its L2-normalised CLIP embedding."""
    embeddings = image_embeddings(scorer.clip, images)
    with torch.no_grad(), torch.autocast(embeddings.device.type, enabled=False):
        return scorer.head(embeddings.to(_device(scorer.head))).squeeze(-1).cpu().tolist()


# ----- loading: once per process, with a one-line error naming the key, the file and the download -----


def load_or_explain(cls, source: str, key: str, what: str, download: str, **kwargs):
    local = is_local(source)
    if local and not Path(source).expanduser().is_dir():
        raise UserError(f"{key}: {source}: no such folder; {download}")
    try:
        return cls.from_pretrained(str(Path(source).expanduser()) if local else source, **kwargs)
    except Exception as err:  # the hub, safetensors and the processors each raise their own kinds
        raise UserError(f"{key}: could not load {what} from {source!r} ({first_line(err)}); {download}") from None


def hub_hint(repo: str) -> str:
    return (
        f"download it on a connected machine (hf download {repo} --local-dir FOLDER) and pass the folder, "
        "or set HF_HUB_OFFLINE=1 with a copied cache"
    )


PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def load_processor(sources: list[str], key: str, download: str):
    from transformers import AutoProcessor

    # A fine-tuned CLIP folder often holds only the model; the base model's processor is the same one.
    for source in sources[:-1]:
        folder = Path(source).expanduser()
        if is_local(source) and any((folder / f).is_file() for f in PROCESSOR_FILES):
            return load_or_explain(AutoProcessor, source, key, "a CLIP processor", download)
    return load_or_explain(AutoProcessor, sources[-1], key, "a CLIP processor", download)


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    return model.float().eval().requires_grad_(False)


def load_pick_score(model: str = DEFAULT_PICK_SCORE, processor: str = VIT_H_14) -> PreferenceCLIP:
    """PickScore's CLIP (hub id or folder) and its processor (the model's folder if it has one, else `processor`)."""
    from transformers import CLIPModel

    key = "model.metrics: PickScore.model"
    hint = hub_hint(DEFAULT_PICK_SCORE if not is_local(model) else model)
    clip = load_or_explain(CLIPModel, model, key, "PickScore", hint)
    return PreferenceCLIP(frozen(clip), load_processor([model, processor], key, hub_hint(VIT_H_14)))


def _read_weights(path: str, key: str, download: str) -> dict[str, torch.Tensor]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{key}: {path}: no such file; download it with `{download}` and pass its path")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load and safetensors raise many kinds on a bad file
        problem = first_line(err)
        raise UserError(f"{key}: could not read {path} ({problem}); download it again with `{download}`") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # training checkpoints wrap the weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{key}: {path} holds no state dict of tensors; download it again with `{download}`")
    return strip_prefix(state)


def load_aesthetic(weights: str, clip: str = AESTHETIC_CLIP, model=None) -> AestheticScorer:
    """The aesthetic head from `weights` (the published .pth) on the CLIP `clip` (hub id or folder); `model`: that
    CLIP's `CLIPModel` when another metric loaded it already."""
    from transformers import CLIPModel

    key = "model.metrics: Aesthetic.weights"
    state = _read_weights(weights, key, AESTHETIC_DOWNLOAD)
    head = AestheticMLP(input_size=state["layers.0.weight"].shape[1] if "layers.0.weight" in state else 768)
    try:
        head.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(
            f"{key}: {weights} is not a LAION aesthetic predictor ({first_line(err)}); "
            f"download {AESTHETIC_FILE} with `{AESTHETIC_DOWNLOAD}`"
        ) from None
    if model is None:
        model = load_or_explain(CLIPModel, clip, "model.metrics: Aesthetic.clip", "CLIP", hub_hint(AESTHETIC_CLIP))
    if model.config.projection_dim != head.layers[0].in_features:
        raise UserError(
            f"model.metrics: Aesthetic.clip: {clip} embeds in {model.config.projection_dim} dimensions, the predictor "
            f"expects {head.layers[0].in_features}; use {AESTHETIC_CLIP}"
        )
    processor = load_processor([clip], "model.metrics: Aesthetic.clip", hub_hint(AESTHETIC_CLIP))
    return AestheticScorer(PreferenceCLIP(frozen(model), processor), frozen(head))


def load_hpsv2(checkpoint: str, clip: str = VIT_H_14) -> PreferenceCLIP:
    """HPS v2 / v2.1 from its OpenCLIP checkpoint file, in a `CLIPModel` built from `clip`'s config (hub id or folder).

    Only the configuration and processor of `clip` are used; every weight comes from the checkpoint.
    """
    from transformers import CLIPConfig, CLIPModel

    key = "model.metrics: HPSv2.checkpoint"
    state = _read_weights(checkpoint, key, HPSV2_DOWNLOAD)
    config = load_or_explain(CLIPConfig, clip, "model.metrics: HPSv2.clip", "a CLIP config", hub_hint(VIT_H_14))
    # OpenCLIP's ViT-H-14 uses exact GELU in both towers (not OpenAI CLIP's quick GELU).
    config.text_config.hidden_act = config.vision_config.hidden_act = "gelu"
    model = CLIPModel(config)
    try:
        renamed = openclip_to_transformers(state)
        missing, unexpected = model.load_state_dict(renamed, strict=False)
    except (KeyError, RuntimeError) as err:
        raise UserError(
            f"{key}: {checkpoint} does not fit OpenCLIP ViT-H-14 as configured by {clip} ({first_line(err)}); "
            f"download {HPSV2_FILE} with `{HPSV2_DOWNLOAD}`"
        ) from None
    missing = [k for k in missing if not k.endswith("position_ids")]  # buffers transformers rebuilds itself
    if missing or unexpected:
        raise UserError(
            f"{key}: {checkpoint} lacks {len(missing)} weights (e.g. {missing[:1]}) and has {len(unexpected)} "
            f"unknown ones for OpenCLIP ViT-H-14; download {HPSV2_FILE} with `{HPSV2_DOWNLOAD}`"
        )
    return PreferenceCLIP(frozen(model), load_processor([clip], "model.metrics: HPSv2.clip", hub_hint(VIT_H_14)))
