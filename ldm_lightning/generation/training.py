"""The latent diffusion training objective (Rombach et al. 2022, eq. 2): predict the noise added to VAE latents."""

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from ldm_lightning.errors import UserError
from ldm_lightning.generation.sampling import encode_text, tokenize

TRAINABLE_PREDICTION_TYPES = ("epsilon", "v_prediction")


def encode_images(vae, pixel_values: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> latents scaled by the VAE's own factor (a sample of the posterior, from torch's
    global generator, which Lightning's `seed_everything` seeds)."""
    posterior = vae.encode(pixel_values.to(vae.dtype)).latent_dist
    return posterior.sample() * vae.config.scaling_factor


def prediction_type(noise_schedule: DDPMScheduler) -> str:
    """What the U-Net is trained to predict, from the scheduler config; an error for a type `fit` does not train."""
    kind = noise_schedule.config.prediction_type
    if kind not in TRAINABLE_PREDICTION_TYPES:
        raise UserError(
            f"scheduler prediction_type: {kind!r} cannot be trained; "
            f"use a model whose scheduler_config.json says one of {', '.join(TRAINABLE_PREDICTION_TYPES)}"
        )
    return kind


def min_snr_weights(noise_schedule: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-γ (Hang et al. 2023, eq. 6), for the schedule's prediction type.

    The paper's weight min(SNR, γ) is stated for the loss on x₀; the MSE on ε is SNR times that loss,
    and the MSE on v = √ᾱ ε − √(1 − ᾱ) x₀ is SNR + 1 times it, so the weights become min(SNR, γ)/SNR
    for epsilon and min(SNR, γ)/(SNR + 1) for v_prediction (as diffusers' train_text_to_image.py does).
    """
    kind = prediction_type(noise_schedule)
    snr = compute_snr(noise_schedule, timesteps)  # ᾱ_t / (1 − ᾱ_t)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / snr if kind == "epsilon" else clipped / (snr + 1)


def diffusion_loss(
    unet,
    text_encoder,
    tokenizer,
    noise_schedule: DDPMScheduler,
    latents: torch.Tensor,
    prompts: list[str],
    snr_gamma: float | None = None,
    noise_offset: float = 0.0,
) -> torch.Tensor:
    """MSE between the U-Net's estimate and the true noise (or velocity) at uniformly drawn timesteps.

    `noise_offset` adds a per-image, per-channel constant to the noise (Guttenberg 2023, "Diffusion
    with Offset Noise"; diffusers' train_text_to_image.py `--noise_offset`), so the model can learn to
    change an image's mean brightness; 0 is the plain objective.
    """
    with torch.no_grad():
        cond = encode_text(text_encoder, tokenize(tokenizer, prompts)[0])
    noise = torch.randn_like(latents)
    if noise_offset:
        noise = noise + noise_offset * torch.randn(latents.shape[:2] + (1, 1), device=latents.device, dtype=noise.dtype)
    steps = noise_schedule.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (latents.shape[0],), device=latents.device)
    noisy = noise_schedule.add_noise(latents, noise, timesteps)
    if prediction_type(noise_schedule) == "v_prediction":
        target = noise_schedule.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    pred = unet(noisy, timesteps, encoder_hidden_states=cond, return_dict=False)[0]
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is not None:
        per_sample = per_sample * min_snr_weights(noise_schedule, timesteps, snr_gamma)
    return per_sample.mean()
