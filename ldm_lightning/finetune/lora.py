"""LoRA adapters on the U-Net's attention projections (Hu et al. 2021), in the file format diffusers loads.

Adapters are 🤗 peft layers added through diffusers' own `unet.add_adapter`; they are saved as
`StableDiffusionPipeline.save_lora_weights` writes them, so `pipe.load_lora_weights(folder)` reads
the result, and `load_lora` reads such files (ours or diffusers' training scripts') back into a U-Net.
peft is an optional dependency (`pip install 'ldm_lightning[lora]'`), imported only when a LoRA is asked for.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from ldm_lightning.errors import UserError, first_line

# SD's attention projections: the targets of diffusers' train_text_to_image_lora.py.
DEFAULT_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name save_lora_weights / load_lora_weights use
ADAPTER = "default"


@dataclass
class LoraFile:
    """A U-Net LoRA in diffusers' format to apply (`model.lora.*`) for predict, test and fit.

    Args:
        path: a file, or a folder holding pytorch_lora_weights.safetensors (what `fit` with LoRA writes).
        scale: strength (1 = as trained, 0 = the base model).
    """

    path: str
    scale: float = 1.0

    def apply(self, unet) -> None:
        """Load it and merge it into the U-Net's weights: a plain U-Net again, which a whole-U-Net fit trains and
        exports as any other (images equal the unmerged adapter's to float rounding)."""
        load_lora(unet, self.path, self.scale)
        merge_lora(unet)


def require_peft(key: str) -> None:
    """Fail with how to install peft when a LoRA is asked for without it."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise UserError(f"{key}: LoRA needs the peft package; pip install 'ldm_lightning[lora]'") from None


def add_lora(unet, rank: int, alpha: float | None = None, target_modules: list[str] | None = None) -> int:
    """Freeze the U-Net and add trainable rank-`rank` adapters; return their number of parameters.

    The adapters start as the identity (peft zeroes the up-projection), so training starts from the model
    as it is. `alpha` sets the update's scale alpha/rank (default: rank, a scale of 1).
    """
    require_peft("model.finetune")
    from peft import LoraConfig

    if rank < 1:
        raise UserError(f"model.finetune.rank: must be at least 1, got {rank}; SD LoRAs commonly use 4 to 128")
    targets = list(target_modules or DEFAULT_TARGET_MODULES)
    unet.requires_grad_(False)
    try:
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=targets), adapter_name=ADAPTER)
    except ValueError as err:  # peft names the targets it did not find
        raise UserError(
            f"model.finetune.target_modules: {first_line(err)}; SD's attention projections are "
            + ", ".join(DEFAULT_TARGET_MODULES)
        ) from None
    return sum(p.numel() for p in unet.parameters() if p.requires_grad)


def has_adapters(unet) -> bool:
    """Whether peft adapters sit on the U-Net (added by `add_lora` or `load_lora`)."""
    return bool(getattr(unet, "peft_config", None))


def merge_lora(unet) -> None:
    """Fold the adapters into the base weights at the scale they are applied with, and remove them: a plain
    U-Net again, whose parameters and saved keys are diffusers' own (`to_q.weight`, not peft's `base_layer`)."""
    if has_adapters(unet):
        unet.fuse_lora()
        unet.unload_lora()


def lora_state_dict(unet) -> dict[str, torch.Tensor]:
    """The adapters' weights under diffusers' key names (what `save_lora_weights` expects for the U-Net)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=ADAPTER))


def save_lora(unet, folder: str | Path) -> Path:
    """Write `folder/pytorch_lora_weights.safetensors`, loadable by `StableDiffusionPipeline.load_lora_weights`.

    The adapter's config (rank, alpha, targets) rides in the file's metadata, so a LoRA trained with
    alpha ≠ rank loads at the scale it was trained with. With EMA, the U-Net holds the averaged weights when
    `fit` ends (the export runs after every callback's end of training), so those are the ones written.
    """
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    config = unet.peft_config[ADAPTER].to_dict()
    config["target_modules"] = sorted(config["target_modules"])  # a set in peft's dict, not JSON
    state = lora_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(
        save_directory=folder,
        unet_lora_layers={k: v.detach().contiguous().cpu() for k, v in state.items()},
        safe_serialization=True,
        unet_lora_adapter_metadata=config,
    )
    return folder / LORA_FILE


def load_lora(unet, path: str | Path, scale: float = 1.0) -> None:
    """Load a diffusers-format U-Net LoRA (a file, or a folder holding pytorch_lora_weights.safetensors) at `scale`."""
    require_peft("model.lora.path")
    path = Path(path).expanduser()
    folder, weight_name = (path, LORA_FILE) if path.is_dir() else (path.parent, path.name)
    if not (folder / weight_name).is_file():
        raise UserError(
            f"model.lora.path: no LoRA file at {folder / weight_name}; give the folder `fit` wrote or the file"
        )
    try:
        unet.load_lora_adapter(str(folder), weight_name=weight_name, prefix="unet", adapter_name=ADAPTER)
    except Exception as err:  # safetensors, peft and diffusers each raise their own kinds
        raise UserError(
            f"model.lora.path: {folder / weight_name} is not a U-Net LoRA for this model ({first_line(err)}); "
            "give a LoRA trained on the same base model"
        ) from None
    unet.set_adapters(ADAPTER, weights=scale)
    unet.requires_grad_(False)
