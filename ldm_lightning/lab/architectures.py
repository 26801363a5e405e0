"""Stable Diffusion v1.4's component architectures, written out to build them without a download.

Every value below is copied from the configuration files of the Hugging Face repository
`CompVis/stable-diffusion-v1-4` (unet/config.json, vae/config.json, text_encoder/config.json,
scheduler/scheduler_config.json). Keys left out take the library default, which matches the file.
Built with random weights (or none, on the meta device), these modules have the exact parameter
counts of the released checkpoint: U-Net 859,520,964; VAE 83,653,863; text encoder 123,060,480.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

# SD v1.4 unet/config.json
SD14_UNET: dict = {
    "sample_size": 64,  # latent side: 512 px / 8
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,  # CLIP ViT-L/14 text width
    # The file says attention_head_dim 8, but diffusers reads it as the number of heads (8 heads of
    # 40, 80, 160 channels); see the note on `num_attention_heads` in UNet2DConditionModel.
    "attention_head_dim": 8,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "center_input_sample": False,
    "use_linear_projection": False,
    "upcast_attention": False,
}

# SD v1.4 vae/config.json: the KL-f8 autoencoder of Rombach et al. 2022
SD14_VAE: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

# SD v1.4 text_encoder/config.json: the text tower of openai/clip-vit-large-patch14
SD14_TEXT_ENCODER: dict = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "projection_dim": 512,  # unused by CLIPTextModel (no projection head), kept as in the file
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}


def build_sd14(device: str | torch.device = "meta", dtype: torch.dtype = torch.float32) -> dict[str, nn.Module]:
    """Build SD v1.4's U-Net, VAE and text encoder with random weights, in eval mode.

    Args:
        device: where the parameters live; "meta" (the default) allocates nothing and builds in
            a fraction of a second, enough for parameter and FLOP counting.
        dtype: parameter dtype.

    Returns:
        {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}
    """
    with torch.device(device):
        modules: dict[str, nn.Module] = {
            "unet": UNet2DConditionModel(**SD14_UNET),
            "vae": AutoencoderKL(**SD14_VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**SD14_TEXT_ENCODER)),
        }
    if dtype != torch.float32:  # diffusers' `.to` warns on every cast, so only cast when asked
        modules = {name: module.to(dtype=dtype) for name, module in modules.items()}
    return {name: module.eval() for name, module in modules.items()}
