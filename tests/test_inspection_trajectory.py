"""The denoising trajectory: images unchanged, x̂₀ formula = schedulers' own, strip ends on the output."""

import pytest
import torch

from ldm_lightning.generation.guidance import ClassifierFreeGuidance
from ldm_lightning.generation.sampling import decode, generate
from ldm_lightning.generation.schedulers import build_scheduler
from ldm_lightning.inspection.trajectory import Trajectory, predicted_original, strip

PROMPTS = ["a red circle", "blue square", "a green star at the top"]
SEEDS = [3, 7, 1234]


def run(components, scheduler, n: int = 3, steps: int = 4, on_step=None, guidance: float = 3.0):
    return generate(
        components,
        scheduler,
        ClassifierFreeGuidance(guidance),
        PROMPTS[:n],
        [""] * n,
        SEEDS[:n],
        num_inference_steps=steps,
        eta=0.5,
        height=32,
        width=32,
        on_step=on_step,
    )


@pytest.mark.parametrize("name", ["ddim", "pndm", "heun"])
@pytest.mark.parametrize("n", [1, 3])
def test_images_are_unchanged_and_the_strip_ends_on_the_output(tiny_module, name, n):
    components = tiny_module.components
    plain = run(components, build_scheduler(name, components.scheduler_config), n).images
    scheduler = build_scheduler(name, components.scheduler_config)
    trajectory = Trajectory(scheduler, every=2)
    samples = run(components, scheduler, n, on_step=trajectory)
    assert torch.equal(plain, samples.images)
    frames = trajectory.frames(components.vae, samples.images)
    loop_steps = len(scheduler.timesteps)  # Heun runs two U-Net calls per step after the first
    assert frames.shape == (n, len(range(2, loop_steps, 2)) + 1, 3, 32, 32)
    assert torch.equal(frames[:, -1], plain)
    assert torch.isfinite(frames).all()


def test_frames_are_kept_every_k_steps(tiny_module):
    components = tiny_module.components
    scheduler = build_scheduler("ddim", components.scheduler_config)
    trajectory = Trajectory(scheduler, every=1)
    samples = run(components, scheduler, n=1, steps=5, on_step=trajectory)
    assert trajectory.indices == [0, 1, 2, 3]  # the 5th step's frame is the output image
    frames = trajectory.frames(components.vae, samples.images)
    assert frames.shape == (1, 5, 3, 32, 32)
    # Each frame is the VAE's decoding of DDIM's own x̂₀ at that step.
    first = decode(components.vae, trajectory.kept[0][1])
    assert torch.equal(frames[:, 0], first)
    assert strip(frames[0]).shape == (3, 32, 5 * 32)


@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_formula_matches_the_schedulers_own_prediction(tiny_module, name):
    """x̂₀ from ε̂ and ᾱ_t on the U-Net's scaled input equals DDIM's (VP) and Euler's (σ-space) pred_original_sample."""
    components = tiny_module.components
    scheduler = build_scheduler(name, components.scheduler_config)
    pairs = []

    def compare(*, index, timestep, model_input, noise, output):
        assert float(timestep) == int(timestep)  # integer timesteps, so ᾱ_t is a table entry
        pairs.append((output.pred_original_sample, predicted_original(scheduler, timestep, model_input, noise)))

    run(components, scheduler, n=2, on_step=compare)
    assert len(pairs) == 4
    for reported, formula in pairs:
        assert torch.allclose(reported, formula, atol=1e-4, rtol=1e-4)


def test_v_prediction_formula():
    """v = √ᾱ ε − √(1−ᾱ) x₀ (Salimans & Ho 2022), so x̂₀ = √ᾱ x_t − √(1−ᾱ) v recovers x₀ exactly."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(prediction_type="v_prediction")
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    alpha = scheduler.alphas_cumprod[300]
    x_t = alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps
    v = alpha.sqrt() * eps - (1 - alpha).sqrt() * x0
    assert torch.allclose(predicted_original(scheduler, 300, x_t, v), x0, atol=1e-5)


def test_every_must_be_positive(tiny_module):
    with pytest.raises(ValueError, match="every"):
        Trajectory(build_scheduler("ddim", tiny_module.components.scheduler_config), every=0)
