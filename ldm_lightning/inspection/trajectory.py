"""The denoising trajectory: the model's prediction of the clean image x̂₀ every k steps, as a strip per image.

At each step the U-Net's estimate implies a clean latent x̂₀; decoded, it shows what the model
"sees" at that noise level (the figure of Ho et al. 2020, Fig. 6). Schedulers that report it
(`pred_original_sample`: DDIM, Euler, LMS, Heun) give it directly; for the others it follows from
the estimate and the noise level ᾱ_t (Ho et al. 2020, eq. 15 for ε; Salimans & Ho 2022 for v):

    ε:  x̂₀ = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t        v:  x̂₀ = √ᾱ_t x_t − √(1−ᾱ_t) v̂

where x_t is the U-Net's scaled input (for σ-parameterised samplers, `scale_model_input` turns
x + σε into exactly this variance-preserving x_t). The strip's last frame is the output image.
"""

import torch

from ldm_lightning.generation.sampling import decode


def predicted_original(scheduler, timestep, model_input: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x̂₀ from the U-Net's (guided) estimate at integer timestep `timestep`, by the checkpoint's prediction type."""
    alpha = scheduler.alphas_cumprod.to(model_input.device, torch.float32)[int(timestep)]
    x, estimate = model_input.float(), noise.float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        x0 = (x - (1 - alpha).sqrt() * estimate) / alpha.sqrt()
    elif kind == "v_prediction":
        x0 = alpha.sqrt() * x - (1 - alpha).sqrt() * estimate
    elif kind == "sample":
        x0 = estimate
    else:
        raise ValueError(f"prediction_type {kind!r}: no x̂₀ formula for it")
    return x0.to(model_input.dtype)


class Trajectory:
    """An `on_step` callback for `generate` that keeps x̂₀ every `every` steps (latents, not pixels).

    Usage::

        trajectory = Trajectory(scheduler, every=5)
        samples = generate(components, scheduler, ..., on_step=trajectory)
        strips = trajectory.frames(components.vae, samples.images)  # (B, frames, 3, H, W)
    """

    def __init__(self, scheduler, every: int):
        """
        Args:
            scheduler: the scheduler `generate` runs (for ᾱ_t where it does not report x̂₀).
            every: keep x̂₀ after steps every, 2·every, …; the output image closes the strip.
        """
        if every < 1:
            raise ValueError(f"every: must be at least 1, got {every}")
        self.scheduler, self.every = scheduler, every
        self.kept: list[tuple[int, torch.Tensor]] = []
        self.steps = 0

    def __call__(self, *, index: int, timestep, model_input, noise, output) -> None:
        self.steps = index + 1
        if (index + 1) % self.every:
            return
        x0 = getattr(output, "pred_original_sample", None)
        if x0 is None:
            x0 = predicted_original(self.scheduler, timestep, model_input, noise)
        self.kept.append((index, x0.detach().clone()))

    @property
    def indices(self) -> list[int]:
        """The steps (0-based) of the x̂₀ frames; the last step's frame is the output itself."""
        return [i for i, _ in self.kept if i < self.steps - 1]

    @torch.no_grad()
    def frames(self, vae, images: torch.Tensor, force_fp32: bool = False) -> torch.Tensor:
        """Decoded x̂₀ frames followed by the output `images`: (B, frames, 3, H, W) in [0, 1]."""
        latents = [x0 for i, x0 in self.kept if i < self.steps - 1]
        decoded = [decode(vae, x0, force_fp32=force_fp32).to(images.device) for x0 in latents]
        return torch.stack([*decoded, images.float()], dim=1)


def strip(frames: torch.Tensor) -> torch.Tensor:
    """One image's (frames, 3, H, W) side by side: (3, H, frames·W)."""
    return torch.cat(list(frames), dim=-1)
