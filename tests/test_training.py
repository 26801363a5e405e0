"""The training objective's Min-SNR-γ weights (Hang et al. 2023) for each prediction type `fit` trains."""

import math

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from ldm_lightning.errors import UserError
from ldm_lightning.generation.training import min_snr_weights

TIMESTEPS = torch.tensor([0, 1, 10, 100, 250, 500, 750, 999])
GAMMA = 5.0


def sd_v1_schedule(prediction_type: str) -> DDPMScheduler:
    """SD v1's training schedule (its scheduler_config.json: scaled_linear, 0.00085 to 0.012, 1000 steps)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
    )


def diffusers_script_weights(schedule: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """diffusers' train_text_to_image.py: `compute_snr`, the element-wise min with γ, then divided by SNR for
    epsilon and by SNR + 1 for v_prediction."""
    snr = compute_snr(schedule, timesteps)
    weights = torch.stack([snr, gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    return weights / snr if schedule.config.prediction_type == "epsilon" else weights / (snr + 1)


def sd_v1_snr(t: int) -> float:
    """SNR(t) = ᾱ_t / (1 − ᾱ_t) by hand from SD v1's betas: √β evenly spaced from √0.00085 to √0.012, ᾱ_t their
    running product of 1 − β (Ho et al. 2020, eq. 4), in Python floats."""
    roots = [0.00085**0.5 + (0.012**0.5 - 0.00085**0.5) * i / 999 for i in range(1000)]
    alpha_bar = math.prod(1 - r * r for r in roots[: t + 1])
    return alpha_bar / (1 - alpha_bar)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_weights_equal_diffusers_training_scripts(prediction_type):
    schedule = sd_v1_schedule(prediction_type)
    expected = diffusers_script_weights(schedule, TIMESTEPS, GAMMA)
    torch.testing.assert_close(min_snr_weights(schedule, TIMESTEPS, GAMMA), expected, rtol=1e-6, atol=0)


def test_epsilon_weights_by_hand():
    # t = 0: ᾱ = 1 − 0.00085, SNR = 0.99915 / 0.00085 = 1175.47, weight γ / SNR = 0.0042536.
    # t = 999: ᾱ ≈ 0.00466, SNR ≈ 0.00468 < γ, weight 1.
    assert sd_v1_snr(0) == pytest.approx(0.99915 / 0.00085, rel=1e-9)
    weights = min_snr_weights(sd_v1_schedule("epsilon"), TIMESTEPS, GAMMA)
    expected = [min(sd_v1_snr(int(t)), GAMMA) / sd_v1_snr(int(t)) for t in TIMESTEPS]
    torch.testing.assert_close(weights.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=0)
    assert weights[0].item() == pytest.approx(0.0042536, rel=1e-4) and weights[-1] == 1.0


def test_v_prediction_weights_by_hand():
    # t = 0: γ / (SNR + 1) = 5 / 1176.47 = 0.0042500; t = 999: SNR / (SNR + 1) ≈ 0.00466, far below ε's 1.
    weights = min_snr_weights(sd_v1_schedule("v_prediction"), TIMESTEPS, GAMMA)
    expected = [min(sd_v1_snr(int(t)), GAMMA) / (sd_v1_snr(int(t)) + 1) for t in TIMESTEPS]
    torch.testing.assert_close(weights.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=0)
    assert weights[0].item() == pytest.approx(0.0042500, rel=1e-4) and weights[-1].item() < 0.01


@pytest.mark.parametrize("kind", ["sample", "flow"])
def test_a_prediction_type_fit_does_not_train_is_refused(kind):
    schedule = sd_v1_schedule("epsilon")
    schedule.register_to_config(prediction_type=kind)
    with pytest.raises(UserError, match=f"prediction_type: '{kind}' cannot be trained"):
        min_snr_weights(schedule, TIMESTEPS, GAMMA)
