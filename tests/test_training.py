"""The training objective's Min-SNR-γ weights (Hang et al. 2023) for each prediction type `fit` trains."""

import pytest
import torch
from diffusers import DDPMScheduler

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


def snr_from_alphas_cumprod(schedule: DDPMScheduler) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 − ᾱ_t) in float64, straight from the schedule's ᾱ."""
    alphas_cumprod = schedule.alphas_cumprod.double()[TIMESTEPS]
    return alphas_cumprod / (1 - alphas_cumprod)


def test_epsilon_weights_are_min_snr_gamma_over_snr():
    schedule = sd_v1_schedule("epsilon")
    snr = snr_from_alphas_cumprod(schedule)
    expected = torch.minimum(snr, torch.full_like(snr, GAMMA)) / snr
    weights = min_snr_weights(schedule, TIMESTEPS, GAMMA)
    torch.testing.assert_close(weights.double(), expected, rtol=1e-5, atol=0)
    # Low-noise steps (SNR > γ) are weighted down; high-noise steps (SNR < γ) keep weight 1.
    assert weights[0] < 0.01 and weights[-1] == 1.0


def test_v_prediction_weights_are_min_snr_gamma_over_snr_plus_one():
    schedule = sd_v1_schedule("v_prediction")
    snr = snr_from_alphas_cumprod(schedule)
    expected = torch.minimum(snr, torch.full_like(snr, GAMMA)) / (snr + 1)
    weights = min_snr_weights(schedule, TIMESTEPS, GAMMA)
    torch.testing.assert_close(weights.double(), expected, rtol=1e-5, atol=0)
    # Unlike ε's, the weight of the noisiest step is SNR/(SNR + 1), far below 1.
    assert weights[-1] < 0.01


@pytest.mark.parametrize("kind", ["sample", "flow"])
def test_a_prediction_type_fit_does_not_train_is_refused(kind):
    schedule = sd_v1_schedule("epsilon")
    schedule.register_to_config(prediction_type=kind)
    with pytest.raises(UserError, match=f"prediction_type: '{kind}' cannot be trained"):
        min_snr_weights(schedule, TIMESTEPS, GAMMA)
