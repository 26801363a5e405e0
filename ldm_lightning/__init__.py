"""ldm_lightning: Stable Diffusion v1.4 latent diffusion rebuilt as Lightning parts.

    from ldm_lightning import LatentDiffusionModule, PromptDataModule, ImageWriter

The three load on first use, so `python -m ldm_lightning.compare` and other light entry points start
without importing torch, Lightning and diffusers.
"""

from importlib import import_module
from typing import TYPE_CHECKING

_EXPORTS = {
    "LatentDiffusionModule": "ldm_lightning.module",
    "PromptDataModule": "ldm_lightning.data",
    "ImageWriter": "ldm_lightning.run_folder.writer",
}
__all__ = ["ImageWriter", "LatentDiffusionModule", "PromptDataModule"]

if TYPE_CHECKING:
    from ldm_lightning.data import PromptDataModule
    from ldm_lightning.module import LatentDiffusionModule
    from ldm_lightning.run_folder.writer import ImageWriter


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ldm_lightning' has no attribute {name!r}")
