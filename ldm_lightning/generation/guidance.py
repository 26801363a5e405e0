"""Guidance: how each denoising step combines the conditional and unconditional noise estimates.

A guidance method is a part passed to the module (`--model.guidance`, class path + init args):
`ClassifierFreeGuidance` here (the default), one of diffusers' guiders (`diffusers.guiders.*`,
wrapped by `DiffusersGuider`), or a class of your own that subclasses `Guidance`:

    class Linear(Guidance):
        def __init__(self, top: float = 7.5):
            self.top = top

        def combine(self, cond, uncond, step, num_steps, timestep):
            scale = 1 + (self.top - 1) * (step + 1) / num_steps
            return uncond + scale * (cond - uncond)
"""

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ldm_lightning.errors import UserError


class Guidance(ABC):
    """One denoising step's guided noise estimate from the U-Net's estimates (all (B, C, h, w))."""

    def needs_unconditional(self, step: int, num_steps: int) -> bool:
        """Whether step `step` (0-based, of `num_steps`) needs the unconditional estimate; when it does not,
        the U-Net runs on the conditional batch alone and `combine` gets `uncond=None`."""
        return True

    def reset(self) -> None:  # noqa: B027 (a hook subclasses may leave alone)
        """Called before each batch's first step: forget any state kept across steps."""

    @abstractmethod
    def combine(
        self, cond: torch.Tensor, uncond: torch.Tensor | None, step: int, num_steps: int, timestep: torch.Tensor
    ) -> torch.Tensor:
        """The guided estimate. Row i of the result may depend on row i of the inputs only: an image must not
        change with the batch it is sampled in."""


@dataclass
class ClassifierFreeGuidance(Guidance):
    """Classifier-free guidance (Ho & Salimans 2022), as `StableDiffusionPipeline` computes it.

    Args:
        guidance_scale: how far to extrapolate from the unconditional estimate towards the conditional one;
            <= 1 turns guidance off (the U-Net then runs on the conditional batch alone). SD v1.4 uses 7.5.
        guidance_rescale: rescale the guided estimate towards the conditional one's standard deviation
            (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", sec. 3.4); 0 is off.
        start: fraction of the steps after which guidance starts (0 = from the first step).
        stop: fraction of the steps after which guidance stops (1 = until the last step).
    """

    guidance_scale: float = 7.5
    guidance_rescale: float = 0.0
    start: float = 0.0
    stop: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise UserError(
                f"model.guidance.guidance_scale: must be a finite number >= 0, got {self.guidance_scale}; "
                "SD v1.4 uses 7.5"
            )
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise UserError(f"model.guidance.guidance_rescale: must be in [0, 1], got {self.guidance_rescale}; try 0.7")
        if not 0.0 <= self.start <= self.stop <= 1.0:
            raise UserError(
                f"model.guidance.start / stop: need 0 <= start <= stop <= 1, got {self.start} and {self.stop}"
            )

    def needs_unconditional(self, step: int, num_steps: int) -> bool:
        # The same step window as diffusers' guiders: int(start·n) <= step < int(stop·n).
        within = int(self.start * num_steps) <= step < int(self.stop * num_steps)
        return self.guidance_scale > 1.0 and within

    def combine(self, cond, uncond, step, num_steps, timestep):
        if uncond is None:
            return cond
        # Ho & Salimans 2022, eq. 6: extrapolate from the unconditional estimate towards the conditional one.
        guided = uncond + self.guidance_scale * (cond - uncond)
        if self.guidance_rescale > 0:
            from diffusers.guiders.guider_utils import rescale_noise_cfg

            guided = rescale_noise_cfg(guided, cond, guidance_rescale=self.guidance_rescale)
        return guided


class DiffusersGuider(Guidance):
    """One of diffusers' guiders (`diffusers.guiders`: APG, CFG-Zero*, tangential CFG, frequency-decoupled, …)
    that combines the conditional and unconditional estimates.

    Guiders that perturb the U-Net itself (PAG, skip-layer, smoothed-energy, auto-guidance) hook into a
    transformer's blocks by name, which SD v1's U-Net does not have; they are refused in one line.
    """

    def __init__(self, guider) -> None:
        """Args:
        guider: a `diffusers.guiders.BaseGuidance` instance.
        """
        from diffusers.guiders.guider_utils import BaseGuidance

        name = type(guider).__name__
        if type(guider).prepare_models is not BaseGuidance.prepare_models or len(guider._input_predictions) != 2:
            raise UserError(
                f"model.guidance: {name} perturbs the denoiser's layers, which diffusers' guiders can only do on "
                "transformer denoisers, not on SD v1's U-Net; use a guider that combines the conditional and "
                "unconditional predictions (ClassifierFreeGuidance, AdaptiveProjectedGuidance, "
                "ClassifierFreeZeroStarGuidance, TangentialClassifierFreeGuidance, FrequencyDecoupledGuidance)"
            )
        self.guider = guider

    def needs_unconditional(self, step: int, num_steps: int) -> bool:
        self.guider.set_state(step=step, num_inference_steps=num_steps, timestep=None)
        if step == 0:
            self.guider.prepare_inputs({})  # resets the state a guider keeps across steps (APG's momentum)
        return self.guider.num_conditions == 2

    def combine(self, cond, uncond, step, num_steps, timestep):
        self.guider.set_state(step=step, num_inference_steps=num_steps, timestep=timestep)
        return self.guider.forward(pred_cond=cond, pred_uncond=uncond).pred


def as_guidance(guidance) -> Guidance:
    """`guidance` as a `Guidance`: diffusers' guiders are wrapped, anything else must subclass `Guidance`."""
    if isinstance(guidance, Guidance):
        return guidance
    from diffusers.guiders.guider_utils import BaseGuidance

    if isinstance(guidance, BaseGuidance):
        return DiffusersGuider(guidance)
    raise UserError(
        f"model.guidance: {type(guidance).__name__} is not a guidance method; subclass "
        "ldm_lightning.generation.guidance.Guidance or pass one of diffusers.guiders"
    )
