"""ldm_lightning: Stable Diffusion v1.4 latent diffusion rebuilt as Lightning parts.

    from ldm_lightning import LatentDiffusionModule, PromptDataModule, ImageWriter
    from ldm_lightning import Sampling, ClassifierFreeGuidance, Inspection, LoraFile, FullUNet, LoRA

They load on first use, so `python -m ldm_lightning.compare` and other light entry points start
without importing torch, Lightning and diffusers.
"""

from importlib import import_module
from typing import TYPE_CHECKING

_EXPORTS = {
    "LatentDiffusionModule": "ldm_lightning.module",
    "PromptDataModule": "ldm_lightning.data",
    "ImageWriter": "ldm_lightning.run_folder.writer",
    "Sampling": "ldm_lightning.generation.sampler",
    "ClassifierFreeGuidance": "ldm_lightning.generation.guidance",
    "Inspection": "ldm_lightning.inspection.batch",
    "LoraFile": "ldm_lightning.finetune.lora",
    "FullUNet": "ldm_lightning.finetune.method",
    "LoRA": "ldm_lightning.finetune.method",
}
__all__ = [
    "ClassifierFreeGuidance",
    "FullUNet",
    "ImageWriter",
    "Inspection",
    "LatentDiffusionModule",
    "LoRA",
    "LoraFile",
    "PromptDataModule",
    "Sampling",
]

if TYPE_CHECKING:
    from ldm_lightning.data import PromptDataModule
    from ldm_lightning.finetune.lora import LoraFile
    from ldm_lightning.finetune.method import FullUNet, LoRA
    from ldm_lightning.generation.guidance import ClassifierFreeGuidance
    from ldm_lightning.generation.sampler import Sampling
    from ldm_lightning.inspection.batch import Inspection
    from ldm_lightning.module import LatentDiffusionModule
    from ldm_lightning.run_folder.writer import ImageWriter


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ldm_lightning' has no attribute {name!r}")
