"""Loading the frozen Stable Diffusion components (tokenizer, text encoder, U-Net, VAE, scheduler config)."""

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel
from huggingface_hub import hf_hub_download
from transformers import CLIPTextModel, PreTrainedTokenizerBase

from ldm_lightning.errors import UserError, first_line
from ldm_lightning.locations import is_local

SD14 = "CompVis/stable-diffusion-v1-4"
ASSETS = Path(__file__).parent.parent / "assets"
# Models that ship inside the package, usable by bare name with no download.
EMBEDDED = {"tiny-shapes": ASSETS / "tiny-shapes"}

HOW_TO_GET_WEIGHTS = (
    "The weights are neither in the Hugging Face cache nor downloadable from where this runs. On a connected\n"
    "machine run\n"
    "    hf download CompVis/stable-diffusion-v1-4 --exclude '*.ckpt' --local-dir sd-v1-4\n"
    "(accept the model licence on huggingface.co first), copy the folder over and pass\n"
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


PARTS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
WEIGHT_PARTS = ("text_encoder", "unet", "vae")
# SD v1.4's own model_index.json: the (library, class) that loads each part.
SD1_CLASSES = {
    "scheduler": ("diffusers", "PNDMScheduler"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "unet": ("diffusers", "UNet2DConditionModel"),
    "vae": ("diffusers", "AutoencoderKL"),
}
# A local folder without model_index.json: its tokenizer_config.json names the tokenizer's class.
FOLDER_CLASSES = {**SD1_CLASSES, "tokenizer": ("transformers", "AutoTokenizer")}
LIBRARIES = ("transformers", "diffusers")


def check_model_folder(folder: Path, variant: str | None, allow_pickle: bool) -> None:
    """Name the missing part, the missing variant or the pickle-only weights of a local model folder."""
    key = "model.pretrained_model_name_or_path"
    for part in PARTS:
        if not (folder / part).is_dir():
            raise UserError(
                f"{key}: {folder} has no {part}/ folder; a diffusers SD v1 folder holds "
                + ", ".join(p + "/" for p in PARTS)
            )
    for part in WEIGHT_PARTS:
        files = [f.name for f in (folder / part).iterdir()]
        weights = [f for f in files if f.endswith((".safetensors", ".bin"))]
        if variant and not any(f".{variant}." in f for f in weights):
            raise UserError(
                f"model.variant: {folder / part} has no {variant!r} weights (found: {', '.join(weights) or 'none'}); "
                "leave --model.variant out or give one that is there"
            )
        chosen = [f for f in weights if (f".{variant}." in f) == bool(variant)]
        if not any(f.endswith(".safetensors") for f in chosen):
            if any(f.endswith(".bin") for f in chosen) and not allow_pickle:
                raise UserError(
                    f"{key}: {folder / part} holds only .bin (pickle) weights; pass --model.allow_pickle true "
                    "if you trust these files (unpickling runs code), or convert them to safetensors"
                )
            if not chosen:
                raise UserError(f"{key}: {folder / part} has no weights (.safetensors); copy the folder again")


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
    local = is_local(root)
    if local:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            kind = "a file, not a folder" if folder.exists() else "no such folder"
            raise UserError(
                f"model.pretrained_model_name_or_path: {root}: {kind}; give the path of a diffusers "
                "Stable Diffusion folder (with tokenizer/, text_encoder/, unet/, vae/, scheduler/)"
            )
        root = str(folder)
        check_model_folder(folder, variant, allow_pickle)
    hub = {"revision": revision}
    weights = {**hub, "variant": variant, "use_safetensors": None if allow_pickle else True}
    advice = (
        "the files in {part} are unreadable or incomplete; copy the folder again"
        if local
        else " ".join(HOW_TO_GET_WEIGHTS.split())
    )
    try:
        index = model_index(root, local, revision)
    except Exception as err:  # the hub's errors (not cached offline, no connection, no such repository) and json's
        raise UserError(
            f"model.pretrained_model_name_or_path: could not load model_index.json of {root!r} ({first_line(err)}); "
            + advice.format(part="model_index.json")
        ) from None
    classes = part_classes(index)
    loaders = {
        "tokenizer": lambda cls: cls.from_pretrained(root, subfolder="tokenizer", **hub),
        "text_encoder": lambda cls: cls.from_pretrained(root, subfolder="text_encoder", **weights),
        "unet": lambda cls: cls.from_pretrained(root, subfolder="unet", **weights),
        "vae": lambda cls: cls.from_pretrained(root, subfolder="vae", **weights),
        "scheduler": lambda cls: dict(cls.load_config(root, subfolder="scheduler", **hub)),
    }
    loaded = {}
    for part, load in loaders.items():
        try:
            loaded[part] = load(classes[part])
        except Exception as err:  # safetensors, torch, json and the hub each raise their own kinds
            raise UserError(
                f"model.pretrained_model_name_or_path: could not load {part}/ of {root!r} ({first_line(err)}); "
                + advice.format(part=f"{part}/")
            ) from None
    tokenizer, text_encoder, unet, vae = (loaded[k] for k in ("tokenizer", "text_encoder", "unet", "vae"))
    scheduler_config = loaded["scheduler"]
    if tokenizer.model_max_length > text_encoder.config.max_position_embeddings:
        # Some tokenizer folders leave model_max_length unset (≈1e30); the text encoder's
        # position table is the real limit (77 for SD v1.4).
        tokenizer.model_max_length = text_encoder.config.max_position_embeddings
    for part in (text_encoder, unet, vae):
        part.requires_grad_(False).eval()
    return Components(tokenizer, text_encoder, unet, vae, scheduler_config)


def model_index(root: str, local: bool, revision: str | None = None) -> dict[str, Any] | None:
    """The model's `model_index.json`, from its folder or the hub (or the hub cache); None for a folder without one."""
    if local:
        index_file = Path(root) / "model_index.json"
        if not index_file.is_file():
            return None
    else:
        index_file = Path(hf_hub_download(root, "model_index.json", revision=revision))
    return json.loads(index_file.read_text())


def part_classes(index: dict[str, Any] | None) -> dict[str, type]:
    """The class that loads each part, as `model_index.json` names it: diffusers' own rule, which hub
    repositories are written for (SD v1.4's tokenizer folder is a CLIPTokenizer's, with no config.json
    for `AutoTokenizer` to read)."""
    if index is None:
        return {part: import_class(part, *named) for part, named in FOLDER_CLASSES.items()}
    return {part: import_class(part, *(index.get(part) or SD1_CLASSES[part])) for part in PARTS}


def import_class(part: str, library: str, name: str) -> type:
    """`library.name` (e.g. transformers.CLIPTokenizer), from the libraries whose parts an SD folder holds."""
    where = f"model.pretrained_model_name_or_path: model_index.json names {library}.{name} for {part}/"
    if library not in LIBRARIES:
        raise UserError(f"{where}; only {' and '.join(LIBRARIES)} classes load (no code from the model runs)")
    cls = getattr(importlib.import_module(library), name, None)
    if cls is None:
        raise UserError(f"{where}, which {library} {importlib.import_module(library).__version__} does not have")
    return cls


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell along one side: 2 per VAE down block after the first (8 for SD v1)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def default_size(unet: UNet2DConditionModel, vae: AutoencoderKL) -> int:
    """The image side the U-Net was trained at, in pixels (512 for SD v1.4)."""
    return int(unet.config.sample_size) * vae_scale_factor(vae)
