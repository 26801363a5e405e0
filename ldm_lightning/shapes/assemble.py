"""Put a trainable SD-v1-shaped model together: trained CLIP text tower + trained VAE + a fresh U-Net.

The result is an ordinary diffusers folder, so `python -m ldm_lightning fit` trains its U-Net exactly
as it would fine-tune SD v1.4's. Run:
`python -m ldm_lightning.shapes.assemble --clip DIR --vae DIR --out DIR`.
"""

import argparse
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPModel

from ldm_lightning.generation.components import vae_scale_factor
from ldm_lightning.generation.export import write_model_index
from ldm_lightning.generation.schedulers import sd14_scheduler
from ldm_lightning.shapes.clip import export_text_encoder


def tiny_unet(cross_attention_dim: int, sample_size: int = 16) -> UNet2DConditionModel:
    """A ~6.6 M-parameter U-Net with SD v1's layout; cross-attention at 8² and 4² only (CPU speed)."""
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,  # diffusers' name; it is the number of heads (as in SD v1's config)
        norm_num_groups=32,
    )


def assemble(clip_dir: Path, vae_dir: Path, out: Path, seed: int = 0) -> Path:
    """Write `out/` with text_encoder/, tokenizer/, vae/, scheduler/, a seeded random unet/ and model_index.json."""
    out.mkdir(parents=True, exist_ok=True)
    clip = CLIPModel.from_pretrained(clip_dir)
    text_encoder = export_text_encoder(clip, out / "text_encoder")
    AutoTokenizer.from_pretrained(clip_dir).save_pretrained(out / "tokenizer")
    sd14_scheduler().save_pretrained(out / "scheduler")
    vae = AutoencoderKL.from_pretrained(vae_dir)
    vae.save_pretrained(out / "vae")
    torch.manual_seed(seed)
    # The latent side follows the VAE: the side of its training images over its downsampling.
    tiny_unet(text_encoder.config.hidden_size, vae.config.sample_size // vae_scale_factor(vae)).save_pretrained(
        out / "unet"
    )
    # A word-level tokenizer: named CLIPTokenizer it would load as byte-level BPE and map every word to <unk>.
    write_model_index(out, {"tokenizer": ("transformers", "PreTrainedTokenizerFast")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, required=True, help="trained CLIP folder (model + tokenizer)")
    parser.add_argument("--vae", type=Path, required=True, help="trained AutoencoderKL folder")
    parser.add_argument("--out", type=Path, required=True, help="diffusers folder to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the U-Net's initial weights")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    print(assemble(args.clip, args.vae, args.out, args.seed))


if __name__ == "__main__":
    main()
