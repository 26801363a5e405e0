"""After `fit`: the trained model as a complete diffusers folder, loadable by `predict`, `test` and diffusers."""

import json
from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class ExportDiffusers(Callback):
    """Write `<log_dir>/model/` (trained U-Net + the frozen parts it was trained with) when fit ends."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            folder = pl_module.save_pretrained(Path(trainer.log_dir or trainer.default_root_dir) / "model")
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
