"""ldm_lightning: Stable Diffusion v1.4 latent diffusion rebuilt as a Lightning module."""
