"""After `fit`: the trained model as a complete diffusers folder, loadable by `predict`, `test` and diffusers."""

import json
from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


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
            from ldm_lightning.finetune.lora import save_lora

            path = save_lora(pl_module.unet, root / "lora")
            rank_zero_info(f"trained LoRA saved in diffusers' format: {path} (load it with --model.lora.path)")
        else:
            folder = pl_module.save_pretrained(root / "model")
            rank_zero_info(f"trained model saved as a diffusers folder: {folder}")


def write_model_index(folder: Path, tokenizer_class: str = "CLIPTokenizer") -> None:
    """`model_index.json` of an SD v1 diffusers folder without safety checker."""
    index = {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", tokenizer_class],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def save_pipeline(components, folder: str | Path, prediction_type: str | None = None) -> Path:
    """Write `components` as a complete diffusers SD v1 folder, whatever they were loaded from: each part's
    `save_pretrained`, the scheduler config (with `prediction_type` when the U-Net was trained to it) and
    `model_index.json`. `StableDiffusionPipeline.from_pretrained(folder)` loads it."""
    from diffusers import PNDMScheduler

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    components.tokenizer.save_pretrained(folder / "tokenizer")
    components.text_encoder.save_pretrained(folder / "text_encoder")
    components.vae.save_pretrained(folder / "vae")
    components.unet.save_pretrained(folder / "unet")
    config = {k: v for k, v in components.scheduler_config.items() if not k.startswith("_")}
    if prediction_type:
        config["prediction_type"] = prediction_type
    PNDMScheduler.from_config(config).save_pretrained(folder / "scheduler")
    write_model_index(folder, type(components.tokenizer).__name__)
    return folder
