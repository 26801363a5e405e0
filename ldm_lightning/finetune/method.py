"""The fine-tuning part (`model.finetune`): what `fit` trains and with which objective.

`FullUNet` trains every U-Net weight; `LoRA` freezes the U-Net and trains low-rank adapters. The
optimizer and learning-rate schedule are Lightning's own `--optimizer` / `--lr_scheduler` (the
config files give AdamW and `WarmupCosine`); in Python, the module's `configure_optimizers` uses the
same defaults, and a subclass may override it as in any LightningModule.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch

from ldm_lightning.errors import UserError


class FineTuning(ABC):
    """What `fit` trains. Subclasses hold the loss settings below (`FullUNet` and `LoRA` are dataclasses)."""

    snr_gamma: float | None
    noise_offset: float
    prediction_type: str | None

    @abstractmethod
    def attach(self, unet) -> None:
        """Change the U-Net's structure before any weights load (adapters), so that checkpoints match."""

    @abstractmethod
    def train(self, unet) -> None:
        """Make what trains trainable (`fit`'s setup)."""

    def trains_adapters(self) -> bool:
        """Whether `fit` trains adapters (exported as a LoRA file) rather than the U-Net (a model folder)."""
        return False

    def scheduler_config(self, config: dict) -> dict:
        """The checkpoint's scheduler config with this method's prediction target, when it sets one."""
        return config if self.prediction_type is None else {**config, "prediction_type": self.prediction_type}


@dataclass
class FullUNet(FineTuning):
    """Train the whole U-Net; the VAE and text encoder stay frozen.

    Args:
        snr_gamma: min-SNR loss weighting gamma (Hang et al. 2023); null for plain MSE.
        noise_offset: offset noise (Guttenberg 2023; diffusers' scripts use about 0.05), so the model can learn
            darker and brighter images; 0 is the plain objective.
        prediction_type: train (and sample) the U-Net to predict "epsilon" or "v_prediction" instead of what the
            checkpoint's scheduler config says; the exported model records it.
        gradient_checkpointing: recompute the U-Net's activations in the backward pass instead of storing them:
            much less memory for about a third more time per step.
    """

    snr_gamma: float | None = 5.0
    noise_offset: float = 0.0
    prediction_type: Literal["epsilon", "v_prediction"] | None = None
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise UserError(f"model.finetune.snr_gamma: must be > 0 or null, got {self.snr_gamma}; try 5")
        if self.noise_offset < 0:
            raise UserError(f"model.finetune.noise_offset: must be >= 0, got {self.noise_offset}; try 0.05")

    def attach(self, unet) -> None:
        pass  # the U-Net as it is

    def train(self, unet) -> None:
        unet.requires_grad_(True)
        self._train_mode(unet)

    def _train_mode(self, unet) -> None:
        unet.train()
        if self.gradient_checkpointing:
            unet.enable_gradient_checkpointing()


@dataclass
class LoRA(FullUNet):
    """Train LoRA adapters on the U-Net (Hu et al. 2021); the U-Net stays frozen. Needs
    `pip install 'ldm_lightning[lora]'`. `fit` writes them as <log_dir>/lora/pytorch_lora_weights.safetensors,
    diffusers' LoRA format.

    Args:
        rank: the adapters' rank.
        alpha: LoRA scale numerator: updates are scaled by alpha / rank. Default: the rank.
        target_modules: U-Net layers that get adapters. Default: the attention projections to_q, to_k, to_v,
            to_out.0 (diffusers' train_text_to_image_lora.py).
    """

    rank: int = 4
    alpha: float | None = None
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1:
            raise UserError(f"model.finetune.rank: must be at least 1, got {self.rank}; SD LoRAs commonly use 4 to 128")

    def attach(self, unet) -> None:
        from ldm_lightning.finetune.lora import add_lora

        add_lora(unet, self.rank, self.alpha, self.target_modules)

    def train(self, unet) -> None:
        self._train_mode(unet)  # `add_lora` left only the adapters trainable

    def trains_adapters(self) -> bool:
        return True


def validates(trainer) -> bool:
    """Whether a `fit` or `validate` run has validation batches to sample and score."""
    from lightning import LightningDataModule
    from lightning.pytorch.utilities.model_helpers import is_overridden

    if trainer is None:  # set up by hand, outside a Trainer
        return False
    datamodule = trainer.datamodule
    has_data = datamodule is not None and is_overridden("val_dataloader", datamodule, LightningDataModule)
    return has_data and trainer.limit_val_batches != 0


class WarmupCosine(torch.optim.lr_scheduler.LambdaLR):
    """Linear warm-up over `warmup_steps`, then cosine decay to 0 at the run's last step (or constant).

    Args:
        optimizer: the optimizer whose learning rate it sets.
        warmup_steps: linear warm-up steps at the start.
        total_steps: the run's optimizer steps; default the Trainer's estimate (`estimated_stepping_batches`),
            filled in by the module when the optimizers are configured.
        decay: "cosine" to 0 at the last step, or "constant" after warm-up (diffusers' training scripts' default).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 100,
        total_steps: int | None = None,
        decay: Literal["cosine", "constant"] = "cosine",
    ) -> None:
        if warmup_steps < 0:
            raise UserError(f"lr_scheduler.warmup_steps: must be >= 0, got {warmup_steps}")
        self.warmup_steps, self.total_steps, self.decay = warmup_steps, total_steps, decay
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        import math

        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        if self.decay == "constant":
            return 1.0
        total = max(self.total_steps or 0, self.warmup_steps + 1)
        progress = (step - self.warmup_steps) / max(1, total - self.warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
