"""Why latent: the same U-Net run on VAE latents and on raw pixels, counted and timed.

Rombach et al. 2022 (sec. 3) move diffusion into an autoencoder's latent space because the
denoiser's cost grows with the number of spatial positions it sees (and attention with their
square). This module measures that claim instead of quoting it:

- counted: FLOPs of SD v1.4's U-Net on a 64×64×4 latent vs the same U-Net on a 512×512×3 image
  (meta device, nothing allocated);
- measured: a reduced U-Net with SD v1.4's block layout, run with random weights on the CPU at a
  latent size and at the matching pixel size: FLOPs, wall time and peak resident memory.

    python -m ldm_lightning.lab.why_latent                     # latent 8² vs pixels 64²
    python -m ldm_lightning.lab.why_latent --latent_side 16   # vs 128² pixels: ~1 minute here
"""

from __future__ import annotations

import json as jsonlib
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from ldm_lightning.lab.anatomy import count_params, unet_step_flops
from ldm_lightning.lab.architectures import SD14_UNET
from ldm_lightning.lab.tensorboard_log import log_table
from ldm_lightning.memory import peak_rss_delta


def sd_layout_unet(widths: tuple[int, ...], heads: int = 8, cross_attention_dim: int = 768) -> dict:
    """A U-Net config with SD v1.4's block layout (cross-attention at every level but the deepest).

    Args:
        widths: channels per level; SD v1.4 uses (320, 640, 1280, 1280).
        heads: attention heads per layer (diffusers' `attention_head_dim`; SD v1.4 uses 8).
        cross_attention_dim: width of the text embeddings (768 for CLIP ViT-L/14).
    """
    levels = len(widths)
    return SD14_UNET | {
        "block_out_channels": tuple(widths),
        "down_block_types": ("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        "attention_head_dim": heads,
        "cross_attention_dim": cross_attention_dim,
    }


def pixel_twin(config: dict, image_channels: int = 3, downsample: int = 8) -> dict:
    """The same U-Net made for images: `image_channels` in and out, sides `downsample`× larger."""
    return config | {
        "in_channels": image_channels,
        "out_channels": image_channels,
        "sample_size": config["sample_size"] * downsample,
    }


def count_unet_flops(config: dict, side: int) -> int:
    """FLOPs of one U-Net call on one side×side sample, built from `config` on the meta device."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    return unet_step_flops(unet, (side, side), batch=1)


def _time_forward(unet: UNet2DConditionModel, repeats: int) -> dict:
    """Peak memory of a first (warm-up) forward, then the best wall time of `repeats` more."""
    side = unet.config.sample_size
    sample = torch.randn(1, unet.config.in_channels, side, side)
    text = torch.randn(1, 77, unet.config.cross_attention_dim)

    def forward() -> None:
        with torch.no_grad():
            unet(sample, 999, encoder_hidden_states=text)

    peak = peak_rss_delta(forward)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward()
        seconds.append(time.perf_counter() - start)
    return {"params": count_params(unet), "seconds": min(seconds), "peak_bytes": peak}


def measure_forwards(configs: list[dict], repeats: int, threads: int | None, seed: int = 0) -> list[dict]:
    """Build each U-Net with random weights and measure one forward on a random sample.

    Best-of-n wall time is the usual estimate on a machine shared with other work. Run the
    smallest config first: freed memory is reused, so a later, larger run is under-counted by at
    most the earlier runs' peaks.
    """
    if threads:
        torch.set_num_threads(threads)
    results = []
    for config in configs:
        torch.manual_seed(seed)
        results.append(_time_forward(UNet2DConditionModel(**config).eval(), repeats))
    return results


def compare(
    config: dict,
    downsample: int = 8,
    image_channels: int = 3,
    repeats: int = 2,
    threads: int | None = None,
) -> dict:
    """Measure U-Net `config` at its latent size and its pixel twin at the matching image size.

    Forwards run in one fresh (spawned) process, so memory left by the caller does not blur the
    peaks.
    """
    pixel = pixel_twin(config, image_channels, downsample)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        runs = pool.submit(measure_forwards, [config, pixel], repeats, threads).result()
    sizes = {"latent": config, "pixel": pixel}
    out = {
        "downsample": downsample,
        "repeats": repeats,
        "heads": config["attention_head_dim"],
        "block_out_channels": list(config["block_out_channels"]),
        "threads": threads or torch.get_num_threads(),
    }
    for (name, cfg), run in zip(sizes.items(), runs, strict=True):
        side = cfg["sample_size"]
        out[name] = run | {"shape": [cfg["in_channels"], side, side], "flops": count_unet_flops(cfg, side)}
    return out


def sd14_counted(image_channels: int = 3, downsample: int = 8) -> dict:
    """FLOPs of SD v1.4's U-Net per sample on its 64² latent and on the matching 512² image."""
    pixel = pixel_twin(SD14_UNET, image_channels, downsample)
    side = SD14_UNET["sample_size"]
    return {"latent": count_unet_flops(SD14_UNET, side), "pixel": count_unet_flops(pixel, pixel["sample_size"])}


def _ratio(a: float | None, b: float | None) -> str:
    return f"{b / a:,.1f}×" if a and b else "n/a"


def format_table(result: dict) -> str:
    """Render `compare` (and optionally `sd14_counted`) results as markdown."""
    lat, pix = result["latent"], result["pixel"]
    values = [lat["shape"][0] * lat["shape"][1] ** 2, pix["shape"][0] * pix["shape"][1] ** 2]
    mb = [r["peak_bytes"] / 1e6 if r["peak_bytes"] is not None else None for r in (lat, pix)]
    rows = [
        (
            "input (C×H×W)",
            *("×".join(map(str, r["shape"])) for r in (lat, pix)),
            f"{values[1] / values[0]:g}× values (compression)",
        ),
        (
            "spatial positions",
            f"{lat['shape'][1] ** 2:,}",
            f"{pix['shape'][1] ** 2:,}",
            _ratio(lat["shape"][1] ** 2, pix["shape"][1] ** 2),
        ),
        ("parameters", f"{lat['params']:,}", f"{pix['params']:,}", ""),
        (
            "GFLOP per forward (counted)",
            f"{lat['flops'] / 1e9:,.2f}",
            f"{pix['flops'] / 1e9:,.2f}",
            _ratio(lat["flops"], pix["flops"]),
        ),
        (
            f"wall time per forward, s (best of {result['repeats']})",
            f"{lat['seconds']:.3f}",
            f"{pix['seconds']:.3f}",
            _ratio(lat["seconds"], pix["seconds"]),
        ),
        ("peak RSS increase, MB", *(f"{m:,.1f}" if m is not None else "n/a" for m in mb), _ratio(*mb)),
    ]
    lines = ["| U-Net forward, batch 1 | latent | pixel | pixel / latent |", "|---|---:|---:|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    lines += [
        "",
        (
            f"Measured: SD v1.4's U-Net block layout with widths {result['block_out_channels']}, "
            f"{result['heads']} attention head(s), random weights, fp32, CPU, {result['threads']} "
            f"thread(s); pixel side = latent side × {result['downsample']}."
        ),
    ]
    if "sd14" in result:
        sd = result["sd14"]
        lines.append(
            f"Counted only (meta device): SD v1.4's U-Net, 4×64×64 latent {sd['latent'] / 1e12:.3f}"
            f" TFLOP vs 3×512×512 image {sd['pixel'] / 1e12:,.1f} TFLOP per sample per step: "
            f"{_ratio(sd['latent'], sd['pixel'])} for 48× fewer values."
        )
    return "\n".join(lines)


def why_latent(
    latent_side: int = 8,
    downsample: int = 8,
    widths: tuple[int, ...] = (32, 64, 128, 128),
    heads: int = 1,
    repeats: int = 3,
    threads: int | None = 1,
    sd14: bool = True,
    json: str | None = None,
    tensorboard: str | None = None,
) -> dict:
    """Compare one U-Net at latent size and at pixel size: counted FLOPs, wall time, peak memory.

    Args:
        latent_side: latent height and width of the measured run.
        downsample: the VAE's spatial factor; pixel side = latent_side × downsample (SD v1.4: 8).
        widths: channels per U-Net level (SD v1.4's block layout, narrower to fit a CPU).
        heads: attention heads per layer; 1 keeps head widths (32-128) near SD v1.4's (40-160).
        repeats: timed forwards per size after a warm-up; the best is reported.
        threads: torch threads for the measured forwards. 1 by default: on 2 cores shared with
            other work, 2 threads ran the small latent forward ~100× slower (OpenMP waits).
        sd14: also count SD v1.4's full U-Net at 64² latent vs 512² pixels.
        json: if given, write the numbers to this JSON file.
        tensorboard: if given, log the table to a TensorBoard run in this folder.
    """
    config = sd_layout_unet(widths, heads) | {"sample_size": latent_side}
    result = compare(config, downsample, repeats=repeats, threads=threads)
    if sd14:
        result["sd14"] = sd14_counted(downsample=downsample)
    print(format_table(result))
    if json:
        Path(json).write_text(jsonlib.dumps(result, indent=2) + "\n")
    if tensorboard:
        log_table(tensorboard, "why_latent", format_table(result))
    return result


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(why_latent)
