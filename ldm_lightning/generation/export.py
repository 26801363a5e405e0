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
        if getattr(pl_module.hparams, "lora_rank", None):
            from ldm_lightning.finetune.lora import save_lora

            path = save_lora(pl_module.unet, root / "lora")
            rank_zero_info(f"trained LoRA saved in diffusers' format: {path} (load it with --model.lora)")
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
