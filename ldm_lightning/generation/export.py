"""After `fit`: the trained model as a complete diffusers folder, loadable by `predict`, `test` and diffusers."""

import json
from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from ldm_lightning.errors import UserError
from ldm_lightning.finetune.lora import has_adapters, save_lora
from ldm_lightning.generation.components import SD1_CLASSES, Components


class ExportDiffusers(Callback):
    """When fit ends, write `<log_dir>/model/` (the trained U-Net + the frozen parts it was trained with), or,
    for a LoRA fine-tune, `<log_dir>/lora/pytorch_lora_weights.safetensors`.

    It runs at `on_fit_end`, after every callback's `on_train_end`, so that with an EMA callback
    (Lightning's `EMAWeightAveraging`) the averaged weights are the ones written, whatever the
    order of the callbacks.
    """

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        root = Path(trainer.log_dir or trainer.default_root_dir)
        if pl_module.finetune.trains_adapters():
            path = save_lora(pl_module.unet, root / "lora")
            rank_zero_info(f"trained LoRA saved in diffusers' format: {path} (load it with --model.lora.path)")
        else:
            folder = pl_module.save_pretrained(root / "model")
            rank_zero_info(f"trained model saved as a diffusers folder: {folder}")


def save_pipeline(components: Components, folder: str | Path, prediction_type: str | None = None) -> Path:
    """Write the components as they are in memory as a complete diffusers folder (tokenizer/, text_encoder/, unet/,
    vae/, scheduler/, model_index.json), whatever folder or hub id they were loaded from; `predict`, `test` and
    `StableDiffusionPipeline.from_pretrained` load it.

    `prediction_type`, when given, goes into the scheduler config: samplers read what the U-Net predicts from it.
    """
    if has_adapters(components.unet):  # peft's key names would reload as fresh random projections
        raise UserError(
            "save_pretrained: the U-Net carries LoRA adapters; merge them into its weights first "
            "(ldm_lightning.finetune.lora.merge_lora), or save them alone with save_lora"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    components.tokenizer.save_pretrained(folder / "tokenizer")
    components.text_encoder.save_pretrained(folder / "text_encoder")
    components.unet.save_pretrained(folder / "unet")
    components.vae.save_pretrained(folder / "vae")
    scheduler = {**components.scheduler_config, **({"prediction_type": prediction_type} if prediction_type else {})}
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
    classes = {part: library_class(getattr(components, part)) for part in ("tokenizer", "text_encoder", "unet", "vae")}
    if "_class_name" in scheduler:
        classes["scheduler"] = ("diffusers", scheduler["_class_name"])
    write_model_index(folder, classes)
    return folder


def library_class(part: object) -> tuple[str, str]:
    """(library, class name) of a loaded part, as diffusers' own `save_pretrained` names it in model_index.json."""
    cls = type(part)
    return cls.__module__.split(".")[0], cls.__name__


def write_model_index(folder: Path, classes: dict[str, tuple[str, str]] | None = None) -> None:
    """`model_index.json` of an SD v1 diffusers folder without safety checker; `classes` replace SD v1.4's own
    (library, class) of a part."""
    index = {
        "_class_name": "StableDiffusionPipeline",
        **{part: list(named) for part, named in {**SD1_CLASSES, **(classes or {})}.items()},
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
