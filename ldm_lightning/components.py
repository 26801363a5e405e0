"""Loading the frozen Stable Diffusion components (tokenizer, text encoder, U-Net, VAE, scheduler config)."""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPTextModel, PreTrainedTokenizerBase

from ldm_lightning.errors import UserError, first_line

SD14 = "CompVis/stable-diffusion-v1-4"
ASSETS = Path(__file__).parent / "assets"
# Models that ship inside the package, usable by bare name with no download.
EMBEDDED = {"tiny-shapes": ASSETS / "tiny-shapes"}

HOW_TO_GET_WEIGHTS = (
    "This machine cannot download weights. On a connected machine run\n"
    "    hf download CompVis/stable-diffusion-v1-4 --exclude '*.ckpt' --local-dir sd-v1-4\n"
    "(accept the model licence on huggingface.co first), copy the folder here and pass\n"
    "    --model.pretrained_model_name_or_path /path/to/sd-v1-4\n"
    "or copy the Hugging Face cache (~/.cache/huggingface/hub) and set HF_HUB_OFFLINE=1."
)


@dataclass
class Components:
    """The parts of a Stable Diffusion v1 checkpoint that sampling and training need."""

    tokenizer: PreTrainedTokenizerBase
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler_config: dict[str, Any]


def resolve(name_or_path: str) -> str:
    """Map an embedded model name to its folder; leave hub ids and paths as they are."""
    if name_or_path in EMBEDDED and not os.path.exists(name_or_path):
        folder = EMBEDDED[name_or_path]
        if not folder.is_dir():
            raise UserError(f"the embedded model {name_or_path!r} is missing from {folder}; reinstall")
        return str(folder)
    return name_or_path


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or os.path.exists(name)


def load_components(
    name_or_path: str,
    revision: str | None = None,
    variant: str | None = None,
    allow_pickle: bool = False,
) -> Components:
    """Load and freeze the components of a diffusers-format SD v1 checkpoint (hub id or folder).

    Weights load from safetensors; pickle (`.bin`) weights only with `allow_pickle`, since
    unpickling runs code. `HF_HUB_OFFLINE=1` is honoured by huggingface_hub itself.
    """
    root = resolve(name_or_path)
    if _looks_like_path(root) and not Path(root).expanduser().is_dir():
        raise UserError(f"model.pretrained_model_name_or_path: no folder at {root!r}.\n" + HOW_TO_GET_WEIGHTS)
    root = str(Path(root).expanduser()) if _looks_like_path(root) else root
    hub = {"revision": revision}
    weights = {**hub, "variant": variant, "use_safetensors": None if allow_pickle else True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer", **hub)
        text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **weights)
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **weights)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **weights)
        # Any scheduler class reads any scheduler config file; PNDM is SD v1.4's own.
        scheduler_config = dict(PNDMScheduler.load_config(root, subfolder="scheduler", **hub))
    except (OSError, ValueError) as err:
        pickle_hint = (
            "\nIf the folder holds only .bin weights, pass --model.allow_pickle true (only for files you trust)."
            if not allow_pickle
            else ""
        )
        raise UserError(
            f"could not load Stable Diffusion components from {root!r}: {first_line(err)}\n"
            + HOW_TO_GET_WEIGHTS
            + pickle_hint
        ) from None
    if tokenizer.model_max_length > text_encoder.config.max_position_embeddings:
        # Some tokenizer folders leave model_max_length unset (≈1e30); the text encoder's
        # position table is the real limit (77 for SD v1.4).
        tokenizer.model_max_length = text_encoder.config.max_position_embeddings
    for part in (text_encoder, unet, vae):
        part.requires_grad_(False).eval()
    return Components(tokenizer, text_encoder, unet, vae, scheduler_config)


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell along one side: 2 per VAE down block after the first (8 for SD v1)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def default_size(unet: UNet2DConditionModel, vae: AutoencoderKL) -> int:
    """The image side the U-Net was trained at, in pixels (512 for SD v1.4)."""
    return int(unet.config.sample_size) * vae_scale_factor(vae)
