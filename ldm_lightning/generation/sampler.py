"""The sampling part (`model.sampling.*`): which scheduler, how many steps, what size, how to decode.

`predict`, `test` and `fit`'s validation all sample through `Sampling.sample`, so one batch of
prompt rows gives the same images whichever stage asks.
"""

from dataclasses import dataclass
from typing import Any, Literal

from ldm_lightning.errors import UserError
from ldm_lightning.generation.components import Components, default_size, vae_scale_factor
from ldm_lightning.generation.guidance import Guidance


@dataclass
class Sampling:
    """How images are sampled.

    Args:
        scheduler: the sampler, built from the checkpoint's own scheduler config: a shorthand (ddim, pndm,
            dpmpp_2m_karras, dpmpp_2m_sde_karras, unipc, euler, euler_ancestral, lms, heun), any diffusers
            scheduler class name (e.g. DEISMultistepScheduler, KDPM2DiscreteScheduler) or the import path of
            your own SchedulerMixin subclass.
        scheduler_config: settings put on top of the checkpoint's scheduler config, e.g.
            {use_karras_sigmas: true}.
        num_inference_steps: denoising steps.
        eta: DDIM noise (0 = deterministic DDIM, 1 = DDPM-like); schedulers without `eta` ignore it.
        height: image height in pixels, a multiple of the VAE factor (8 for SD). Default: the U-Net's training size.
        width: image width in pixels, as height.
        decode_fp32: decode latents with the VAE in fp32: "auto" does so under the fp16 precisions (16-mixed,
            16-true), where SD v1's VAE overflows into black images; bf16 has fp32's exponent range.
        fast: opt-in fast mode (`fast.py`): on a GPU channels-last + `torch.compile` with CUDA graphs, on a CPU
            `torch.compile`. The first batch of each shape pays the compilation; images equal the exact path
            to float rounding.
        step_progress: also show a progress bar over each batch's denoising steps (rank 0), for runs where one
            batch takes minutes (SD v1.4 on a CPU).
    """

    scheduler: str = "ddim"
    scheduler_config: dict[str, Any] | None = None
    num_inference_steps: int = 25
    eta: float = 0.0
    height: int | None = None
    width: int | None = None
    decode_fp32: Literal["auto", "always", "never"] = "auto"
    fast: bool = False
    step_progress: bool = False

    def __post_init__(self) -> None:
        from ldm_lightning.generation.schedulers import scheduler_class

        scheduler_class(self.scheduler)
        if self.num_inference_steps < 1:
            raise UserError(
                f"model.sampling.num_inference_steps: must be at least 1, got {self.num_inference_steps}; try 25"
            )
        if not 0.0 <= self.eta <= 1.0:
            raise UserError(f"model.sampling.eta: must be in [0, 1], got {self.eta}; 0 is deterministic DDIM")
        for name, value in (("height", self.height), ("width", self.width)):
            if value is not None and value <= 0:
                raise UserError(
                    f"model.sampling.{name}: must be a positive number of pixels, got {value}; "
                    "leave it out for the model's own size"
                )
        if self.decode_fp32 not in ("auto", "always", "never"):
            raise UserError(f"model.sampling.decode_fp32: {self.decode_fp32!r} is not one of auto, always, never")

    def speed_up(self, unet) -> None:
        """Apply fast mode to the U-Net in place (once), when it is on; call after the Trainer placed the model."""
        if self.fast:
            from lightning.pytorch.utilities import rank_zero_info

            from ldm_lightning.generation.fast import make_fast

            settings = make_fast(unet)  # in place, once: the sampling code keeps the same module object
            rank_zero_info(f"fast mode {settings}: the first batch of each shape compiles the U-Net (about a minute)")

    def size(self, components: Components) -> tuple[int, int]:
        """(height, width) in pixels for these components, checked against the VAE's factor and the schedule."""
        factor = vae_scale_factor(components.vae)
        native = default_size(components.unet, components.vae)
        height, width = self.height or native, self.width or native
        for name, value in (("height", height), ("width", width)):
            if value % factor:
                raise UserError(
                    f"model.sampling.{name}: {value} is not a multiple of {factor} (the VAE's downsampling "
                    f"factor); try {max(factor, round(value / factor) * factor)}"
                )
        train_steps = int(components.scheduler_config.get("num_train_timesteps", 1000))
        if self.num_inference_steps > train_steps:
            raise UserError(
                f"model.sampling.num_inference_steps: {self.num_inference_steps} is more than the {train_steps} steps "
                f"the model was trained with (its scheduler's num_train_timesteps); use at most {train_steps}"
            )
        return height, width

    def decodes_in_fp32(self, precision: str | None) -> bool:
        """Whether this run decodes in fp32 under the Trainer's `precision` (None: outside a Trainer)."""
        if self.decode_fp32 == "auto":
            return precision is not None and str(precision).startswith("16")
        return self.decode_fp32 == "always"

    def new_scheduler(self, components: Components):
        """A fresh scheduler from the checkpoint's scheduler config with this part's settings on top."""
        from ldm_lightning.generation.schedulers import build_scheduler

        return build_scheduler(self.scheduler, components.scheduler_config, self.scheduler_config)

    def sample(
        self,
        components: Components,
        guidance: Guidance,
        batch: dict[str, Any],
        *,
        precision: str | None = None,
        progress: bool = False,
        scheduler=None,
        on_step=None,
    ):
        """The batch's images (`sampling.Samples`). `scheduler`: a fresh one from `new_scheduler` (default: made
        here), one per batch, since multistep schedulers keep state (diffusers#8711). `on_step` observes each
        step (see `sampling.generate`): inspection passes its recorder here.
        """
        from ldm_lightning.generation.sampling import generate

        height, width = self.size(components)
        return generate(
            components,
            scheduler or self.new_scheduler(components),
            guidance,
            batch["prompt"],
            batch["negative_prompt"],
            [int(s) for s in batch["seed"]],
            num_inference_steps=self.num_inference_steps,
            eta=self.eta,
            height=height,
            width=width,
            decode_fp32=self.decodes_in_fp32(precision),
            progress=progress and self.step_progress,
            on_step=on_step,
        )
