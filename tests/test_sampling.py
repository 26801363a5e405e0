"""Our sampling path against diffusers' StableDiffusionPipeline, and the invariants of the determinism contract."""

import json

import pytest
import torch

from ldm_lightning.data import collate
from ldm_lightning.generation.guidance import ClassifierFreeGuidance
from ldm_lightning.generation.sampling import predict_noise
from ldm_lightning.generation.schedulers import SCHEDULERS
from ldm_lightning.testing import reference_pipeline

PROMPTS = ["a red circle", "blue ../ square ünïcode", "a green star at the top"]
NEGATIVES = ["", "green", "blurry"]
SEEDS = [3, 7, 1234]


def batch_of(prompts, negatives, seeds, start=0):
    rows = [
        {"index": start + i, "prompt": p, "negative_prompt": n, "seed": s}
        for i, (p, n, s) in enumerate(zip(prompts, negatives, seeds))
    ]
    return collate(rows)


def configure(module, scheduler: str, guidance_scale: float, eta: float = 0.0) -> None:
    """Set the sampling settings of this test's copy of the tiny module."""
    module.sampling.scheduler = scheduler
    module.sampling.eta = eta
    module.guidance = ClassifierFreeGuidance(guidance_scale=guidance_scale)


def images(module, batch) -> torch.Tensor:
    samples, _ = module.sample(batch)
    return samples.images


def reference(module, name: str, guidance_scale: float, eta: float = 0.0) -> torch.Tensor:
    """diffusers' own pipeline on the same components, scheduler, prompts and seeds."""
    components = module.components
    pipe = reference_pipeline(components, name)
    generators = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    out = pipe(
        PROMPTS,
        negative_prompt=NEGATIVES,
        generator=generators,
        num_inference_steps=module.sampling.num_inference_steps,
        guidance_scale=guidance_scale,
        eta=eta,
        height=module.height,
        width=module.width,
        output_type="pt",
    )
    return out.images


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_matches_stable_diffusion_pipeline(tiny_module, name):
    configure(tiny_module, name, 4.0, eta=0.5)  # eta: DDIM's stochastic branch, per-row generators
    ours = images(tiny_module, batch_of(PROMPTS, NEGATIVES, SEEDS))
    ref = reference(tiny_module, name, guidance_scale=4.0, eta=0.5)
    assert ours.shape == ref.shape == (3, 3, 32, 32)
    assert ours.std() > 0.01  # not a constant image
    assert (ours - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["ddim", "euler_ancestral"])
def test_image_does_not_depend_on_batch_size_or_position(tiny_module, name):
    configure(tiny_module, name, 3.0)
    together = images(tiny_module, batch_of(PROMPTS, NEGATIVES, SEEDS))
    # One at a time, in reverse order.
    alone = [images(tiny_module, batch_of([p], [n], [s]))[0] for p, n, s in zip(PROMPTS, NEGATIVES, SEEDS)]
    for i in range(3):
        # Batched kernels round differently from unbatched ones: equal to float rounding only.
        assert (together[i] - alone[i]).abs().max().item() <= 1e-5
    assert (together[0] - together[1]).abs().max() > 0.05  # different seeds really differ


def test_guidance_one_is_the_conditional_path(tiny_module):
    configure(tiny_module, "ddim", 1.0)
    plain = images(tiny_module, batch_of(PROMPTS, ["", "", ""], SEEDS))
    other_negatives = images(tiny_module, batch_of(PROMPTS, NEGATIVES, SEEDS))
    assert torch.equal(plain, other_negatives)  # no unconditional half is computed at all
    ref = reference(tiny_module, "ddim", guidance_scale=1.0)
    assert (plain - ref).abs().max().item() <= 1e-5


def test_cfg_formula_at_scale_one_gives_the_conditional_estimate(tiny_module):
    unet = tiny_module.unet
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 4, 4)
    cond, uncond = torch.randn(2, 6, 32), torch.randn(2, 6, 32)
    t = torch.tensor(500)
    eps_cond, eps_uncond = predict_noise(unet, latents, t, cond, uncond)
    conditional, none = predict_noise(unet, latents, t, cond, None)
    assert none is None
    guided = ClassifierFreeGuidance(1.0).combine(eps_cond, eps_uncond, 0, 1, t)
    assert (guided - conditional).abs().max().item() <= 1e-5
    stronger = ClassifierFreeGuidance(7.5).combine(eps_cond, eps_uncond, 0, 1, t)
    assert (stronger - conditional).abs().max().item() > 1e-3


@pytest.mark.parametrize("clip_sample", [None, True, False], ids=["omitted", "set-true", "set-false"])
def test_ddim_respects_the_checkpoints_clip_sample(tiny_module, monkeypatch, clip_sample):
    """An explicit `clip_sample` in the checkpoint's scheduler config is used; where the config omits it
    (SD v1.4's and the embedded model's do), latents are not clipped."""
    from diffusers import DDIMScheduler

    config = {k: v for k, v in tiny_module.components.scheduler_config.items() if k != "clip_sample"}
    if clip_sample is not None:
        config["clip_sample"] = clip_sample
    monkeypatch.setattr(tiny_module.components, "scheduler_config", config)
    configure(tiny_module, "ddim", 4.0)
    ours = images(tiny_module, batch_of(PROMPTS, NEGATIVES, SEEDS))
    pipe = reference_pipeline(tiny_module.components, "ddim")
    # The reference: diffusers' own DDIM built from the same config, False only where the config is silent.
    pipe.scheduler = DDIMScheduler.from_config(config, **({"clip_sample": False} if clip_sample is None else {}))
    assert pipe.scheduler.config.clip_sample is bool(clip_sample)
    ref = pipe(
        PROMPTS,
        negative_prompt=NEGATIVES,
        generator=[torch.Generator("cpu").manual_seed(s) for s in SEEDS],
        num_inference_steps=tiny_module.sampling.num_inference_steps,
        guidance_scale=4.0,
        height=tiny_module.height,
        width=tiny_module.width,
        output_type="pt",
    ).images
    assert (ours - ref).abs().max().item() <= 1e-5
    if clip_sample:  # clipping really changes these latents, so the check above could fail
        monkeypatch.setitem(config, "clip_sample", False)
        unclipped = images(tiny_module, batch_of(PROMPTS, NEGATIVES, SEEDS))
        assert (ours - unclipped).abs().max().item() > 1e-3


def test_embedded_model_config_omits_clip_sample():
    from ldm_lightning.generation.components import EMBEDDED

    config = json.loads((EMBEDDED["tiny-shapes"] / "scheduler" / "scheduler_config.json").read_text())
    assert "clip_sample" not in config  # so DDIM runs on it with the latent default, clip_sample=False
