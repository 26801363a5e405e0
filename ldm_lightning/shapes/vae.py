"""Train the tiny ``AutoencoderKL`` (SD v1's VAE anatomy at 64²: 64² → 16²×4) on shapes images.

Run: ``python -m ldm_lightning.shapes.vae --out DIR --minutes M --seed S [--world scenes]``. The saved config carries
``scaling_factor`` = 1 / std of latents, computed as SD did (Rombach et al. 2022, sec. 4.3.2 / app. G).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch.utils.data import DataLoader

from ldm_lightning.shapes.data import SIZE_PX, Shape, ShapesDataset, Split, eval_shapes, render, to_tensor
from ldm_lightning.shapes.judge import judge
from ldm_lightning.shapes.loop import steps_for_minutes, train_loop
from ldm_lightning.shapes.scene import CANVAS_PX
from ldm_lightning.shapes.scene_data import ScenesDataset, World


def build_vae(norm_num_groups: int = 8, initial_logvar: float = -10.0, sample_size: int = SIZE_PX) -> AutoencoderKL:
    """SD v1's VAE layout scaled down: 3 levels (32, 64, 64), 1 ResNet per level, 4 latent channels.

    8 GroupNorm groups keep SD's 4 channels per group at the widest-resolution level (SD: 128 / 32).
    With 32 groups on 32 channels each channel is normalised alone, which erases its amplitude: a
    black image with one coloured shape then loses its colour (the first run drew grey shapes).

    The posterior log-variance starts at ``initial_logvar``: with the default logvar ≈ 0 the decoder
    first sees unit noise over tiny means and, under a small KL weight, spends hundreds of steps
    growing the signal. ``sample_size`` is the training images' side (the network is convolutional).
    """
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=sample_size,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        norm_num_groups=norm_num_groups,
    )
    with torch.no_grad():  # quant_conv emits [mean, logvar] stacked on the channel axis
        vae.quant_conv.bias[vae.config.latent_channels :].fill_(initial_logvar)
    return vae


def image_batches(
    batch_size: int, seed: int, split: Split = "train", world: World = "shapes"
) -> Iterator[torch.Tensor]:
    """Endless batches of pixel values in [-1, 1] from ``world``, deterministic in ``seed``."""
    if world == "scenes":
        dataset = ScenesDataset(10**9, split, seed, caption_style="full")
    else:
        dataset = ShapesDataset(10**9, split, seed, caption_style="short")
    loader = DataLoader(dataset, batch_size=batch_size)  # sequential indices: no sampler state
    for batch in loader:
        yield batch["pixel_values"]


def vae_loss(
    vae: AutoencoderKL,
    x: torch.Tensor,
    kl_weight: float,
    edge_weight: float,
    mse_weight: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + MSE + L1 on image gradients (sharp edges decide the judged shape) + KL to N(0, I).

    L1's gradient does not shrink with the error, so on ~90% black background it is mostly spent
    there; MSE adds weight to the large colour errors of the shape itself.
    """
    posterior = vae.encode(x).latent_dist
    x_hat = vae.decode(posterior.sample(generator)).sample
    l1 = F.l1_loss(x_hat, x)
    edge = F.l1_loss(x_hat.diff(dim=-1), x.diff(dim=-1)) + F.l1_loss(x_hat.diff(dim=-2), x.diff(dim=-2))
    kl = posterior.kl().mean() / x[0].numel()  # per pixel, like the reconstruction terms
    mse = F.mse_loss(x_hat, x)
    loss = l1 + mse_weight * mse + edge_weight * edge + kl_weight * kl
    return loss, {"loss": loss.item(), "l1": l1.item(), "mse": mse.item(), "edge": edge.item(), "kl": kl.item()}


def train_vae(
    vae: AutoencoderKL,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    kl_weight: float = 1e-4,
    edge_weight: float = 0.5,
    mse_weight: float = 1.0,
    warmup: int = 50,
    log_every: int = 50,
    world: World = "shapes",
) -> list[float]:
    """AdamW with linear warm-up and cosine decay to 1% of ``lr`` on ``world``'s images; returns every step's loss."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    def step_loss(x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return vae_loss(vae, x, kl_weight, edge_weight, mse_weight, generator)

    batches = image_batches(batch_size, seed, world=world)
    return train_loop(
        vae, batches, step_loss, steps, lr, weight_decay=0.0, warmup=warmup, clip_grad_norm=1.0, log_every=log_every
    )


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, num_images: int = 512, seed: int = 0, world: World = "shapes") -> float:
    """1 / std of posterior samples over training images, as SD v1 derived 0.18215."""
    generator = torch.Generator().manual_seed(seed)
    x = next(image_batches(num_images, seed + 1, world=world))
    z = vae.encode(x).latent_dist.sample(generator)
    return float(1.0 / z.flatten().std())


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, shapes: list[Shape]) -> tuple[np.ndarray, np.ndarray]:
    """Render ``shapes`` and pass them through the VAE (posterior mode); returns uint8 (real, recon)."""
    x = torch.stack([to_tensor(render(s)) for s in shapes])
    x_hat = vae.decode(vae.encode(x).latent_dist.mode()).sample
    to_uint8 = lambda t: ((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()  # noqa: E731
    return to_uint8(x), to_uint8(x_hat)


def evaluate(vae: AutoencoderKL, shapes: list[Shape]) -> dict[str, float]:
    """PSNR (dB, on [0, 1]) and the pixel judge's accuracy per attribute on reconstructions."""
    real, recon = reconstruct(vae, shapes)
    mse = ((real.astype(np.float64) - recon.astype(np.float64)) / 255.0) ** 2
    psnr = float(np.mean(-10 * np.log10(mse.reshape(len(shapes), -1).mean(axis=1) + 1e-12)))
    verdicts = [judge(image) for image in recon]
    result = {"psnr": psnr}
    for attribute in ("colour", "shape", "size", "position"):
        hits = [getattr(v, attribute) == getattr(s, attribute) for v, s in zip(verdicts, shapes)]
        result[attribute] = float(np.mean(hits))
    return result


def main() -> None:
    """CLI: time a few steps, train for ``--minutes``, set ``scaling_factor``, evaluate and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for save_pretrained")
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget; sets --steps if absent")
    parser.add_argument("--steps", type=int, default=None, help="exact number of steps (overrides minutes)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, data and sampling")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--kl-weight", type=float, default=1e-4, help="weight of the per-pixel KL term")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--init", type=Path, default=None, help="continue from a saved VAE folder")
    parser.add_argument("--world", choices=("shapes", "scenes"), default="shapes", help="training images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    size = CANVAS_PX if args.world == "scenes" else SIZE_PX
    vae = AutoencoderKL.from_pretrained(args.init) if args.init is not None else build_vae(sample_size=size)
    if (steps := args.steps) is None:
        steps = steps_for_minutes(
            args.minutes,
            lambda: build_vae(sample_size=size),
            lambda probe, n: train_vae(probe, n, args.batch_size, args.lr, args.seed, log_every=0, world=args.world),
        )
    print(f"{sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters, {steps} steps", flush=True)
    start = time.time()
    train_vae(vae, steps, args.batch_size, args.lr, args.seed, args.kl_weight, world=args.world)
    print(f"trained in {time.time() - start:.0f} s", flush=True)
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, seed=args.seed, world=args.world))
    vae.save_pretrained(args.out, safe_serialization=True)
    print(f"scaling_factor {vae.config.scaling_factor:.4f}, saved to {args.out}", flush=True)
    for name, split in (("seen", "train"), ("held_out", "held_out")):
        print(name, {k: round(v, 4) for k, v in evaluate(vae, eval_shapes(split)).items()}, flush=True)


if __name__ == "__main__":
    main()
