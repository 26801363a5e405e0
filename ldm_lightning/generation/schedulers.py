"""Samplers by name: each a diffusers scheduler built from the checkpoint's own scheduler config."""

from typing import Any, Literal

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ldm_lightning.errors import UserError

# SD v1.4's scheduler/scheduler_config.json: PNDM (PLMS steps only) over scaled-linear betas
# 0.00085–0.012, 1000 training steps. The sampler keys below are applied on top of it.
SD14_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

SchedulerName = Literal[
    "ddim",
    "pndm",
    "dpmpp_2m_karras",
    "dpmpp_2m_sde_karras",
    "unipc",
    "euler",
    "euler_ancestral",
    "lms",
    "heun",
]

# name -> (class, overrides on top of the checkpoint's config). The overrides follow the
# k-diffusion / A1111 names: "DPM++ 2M Karras" is DPM-Solver++ (Lu et al. 2022), order 2, Karras
# sigmas (Karras et al. 2022).
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "dpmpp_2m_sde_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "unipc": (UniPCMultistepScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
}


# Keys used only where the checkpoint's config says nothing. DDIM runs on latents, which must not be
# clipped to [-1, 1], but DDIMScheduler defaults to `clip_sample=True` and SD v1.4's PNDM config leaves
# the key out; a config that sets it explicitly is respected.
LATENT_DEFAULTS: dict[str, dict[str, Any]] = {"ddim": {"clip_sample": False}}


def check_scheduler_name(name: str) -> str:
    """Return `name` if known, else raise naming the known ones."""
    if name not in SCHEDULERS:
        known = ", ".join(SCHEDULERS)
        raise UserError(f"model.scheduler: unknown scheduler {name!r}; choose one of: {known}")
    return name


def build_scheduler(name: str, config: dict[str, Any]) -> SchedulerMixin:
    """A fresh scheduler instance from the checkpoint's scheduler config.

    Build one per batch: multistep schedulers keep state between calls (diffusers#8711).
    """
    cls, overrides = SCHEDULERS[check_scheduler_name(name)]
    defaults = {k: v for k, v in LATENT_DEFAULTS.get(name, {}).items() if k not in config}
    return cls.from_config(config, **defaults, **overrides)


def sd14_scheduler() -> PNDMScheduler:
    """SD v1.4's own scheduler, for model folders built by this package (tests, the embedded model)."""
    return PNDMScheduler.from_config(SD14_SCHEDULER_CONFIG)
