"""Samplers: any diffusers scheduler, built from the checkpoint's own scheduler config.

`model.sampling.scheduler` takes one of the shorthand names below (each a scheduler class plus the
settings the k-diffusion / A1111 name implies), a diffusers scheduler class name
(`DEISMultistepScheduler`, `KDPM2DiscreteScheduler`, …) or the import path of a class of your own
that subclasses diffusers' `SchedulerMixin` and `ConfigMixin`.
"""

import inspect
from typing import Any

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


# Used only where the checkpoint's config says nothing. Samplers run on latents, which must not be
# clipped to [-1, 1], but DDIM-like schedulers default to `clip_sample=True` and SD v1.4's PNDM config
# leaves the key out; a config that sets it explicitly is respected.
LATENT_DEFAULTS: dict[str, Any] = {"clip_sample": False}


def scheduler_class(name: str) -> tuple[type[SchedulerMixin], dict[str, Any]]:
    """The scheduler class `name` stands for and the settings it implies, or a one-line error."""
    if name in SCHEDULERS:
        return SCHEDULERS[name]
    found = None
    if "." in name:
        from importlib import import_module

        module_name, _, class_name = name.rpartition(".")
        try:
            found = getattr(import_module(module_name), class_name, None)
        except ImportError:
            found = None
    else:
        import diffusers

        found = getattr(diffusers, name, None) if name.endswith("Scheduler") else None
    if not (isinstance(found, type) and issubclass(found, SchedulerMixin)):
        raise UserError(
            f"model.sampling.scheduler: unknown scheduler {name!r}; give one of {', '.join(SCHEDULERS)}, a diffusers "
            "scheduler class name (e.g. DEISMultistepScheduler) or the import path of a SchedulerMixin subclass"
        )
    return found, {}


def build_scheduler(name: str, config: dict[str, Any], overrides: dict[str, Any] | None = None) -> SchedulerMixin:
    """A fresh scheduler instance from the checkpoint's scheduler `config`, with `overrides` on top.

    Build one per batch: multistep schedulers keep state between calls (diffusers#8711).
    """
    cls, implied = scheduler_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    defaults = {k: v for k, v in LATENT_DEFAULTS.items() if k in accepted and k not in config}
    return cls.from_config(config, **{**defaults, **implied, **(overrides or {})})


def sd14_scheduler() -> PNDMScheduler:
    """SD v1.4's own scheduler, for model folders built by this package (tests, the embedded model)."""
    return PNDMScheduler.from_config(SD14_SCHEDULER_CONFIG)
