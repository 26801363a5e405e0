"""Anatomy of a latent diffusion model: parameters, bytes and FLOPs of each component.

FLOPs are counted, not estimated: `torch.utils.flop_counter.FlopCounterMode` records every matmul,
convolution and attention call of one forward pass, run on the meta device so that SD v1.4 costs no
memory and well under a second. The counter follows the usual convention, 2 FLOPs per
multiply-accumulate, and skips elementwise work (norms, activations, softmax, additions).

    python -m ldm_lightning.lab.anatomy                        # SD v1.4 architecture, 512×512
    python -m ldm_lightning.lab.anatomy --model path/to/diffusers_folder --height 64 --width 64
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from transformers import CLIPTextConfig, CLIPTextModel

from ldm_lightning.errors import UserError
from ldm_lightning.generation.components import default_size, resolve, vae_scale_factor
from ldm_lightning.lab.architectures import build_sd14
from ldm_lightning.lab.tensorboard_log import log_table

BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "bf16": 2}
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".ckpt", ".pt"}


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of CPU flash attention, the kernel `scaled_dot_product_attention` picks on CPU."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch 2.13's counter has formulas for the CUDA attention kernels only: on CPU tensors SDPA runs
# `_scaled_dot_product_flash_attention_for_cpu` and counted 0 FLOPs. On meta tensors it decomposes
# into `bmm`s, which are counted; the mapping makes real CPU tensors count the same.
_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}


def count_flops(fn: Callable[[], object]) -> int:
    """Run `fn()` without autograd and return the FLOPs counted (2 per multiply-accumulate)."""
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
    with counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def count_params(*modules: nn.Module | None) -> int:
    """Total parameter count of the given modules (None entries are skipped)."""
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


def _like(module: nn.Module) -> dict:
    """Device and dtype of a module's parameters, to create matching inputs."""
    p = next(module.parameters())
    return {"device": p.device, "dtype": p.dtype}


def latent_shape(vae: AutoencoderKL, height: int, width: int) -> tuple[int, int, int]:
    """(channels, height, width) of the latent the VAE makes from a height×width image."""
    f = vae_scale_factor(vae)
    if height % f or width % f:
        raise UserError(f"height and width must be multiples of {f}, got {height}×{width}")
    return vae.config.latent_channels, height // f, width // f


def compression(vae: AutoencoderKL, height: int, width: int) -> float:
    """Number of pixel values per latent value (48 for SD v1.4: 3·512·512 / 4·64·64)."""
    c, h, w = latent_shape(vae, height, width)
    return vae.config.in_channels * height * width / (c * h * w)


def unet_step_flops(unet: UNet2DConditionModel, latent_hw: tuple[int, int], batch: int, text_tokens: int = 77) -> int:
    """FLOPs of one U-Net call on `batch` latents, cross-attending to `text_tokens` embeddings."""
    kw = _like(unet)
    sample = torch.zeros(batch, unet.config.in_channels, *latent_hw, **kw)
    text = torch.zeros(batch, text_tokens, unet.config.cross_attention_dim, **kw)
    t = torch.full((batch,), 999, device=kw["device"])
    return count_flops(lambda: unet(sample, t, encoder_hidden_states=text))


def vae_encode_flops(vae: AutoencoderKL, height: int, width: int) -> int:
    """FLOPs of encoding one image into the latent distribution's parameters."""
    image = torch.zeros(1, vae.config.in_channels, height, width, **_like(vae))
    return count_flops(lambda: vae.encode(image))


def vae_decode_flops(vae: AutoencoderKL, height: int, width: int) -> int:
    """FLOPs of decoding one latent into a height×width image."""
    latent = torch.zeros(1, *latent_shape(vae, height, width), **_like(vae))
    return count_flops(lambda: vae.decode(latent))


def text_encoder_flops(text_encoder: CLIPTextModel, batch: int) -> int:
    """FLOPs of encoding `batch` prompts padded to the model's full context length."""
    length = text_encoder.config.max_position_embeddings
    ids = torch.zeros(batch, length, dtype=torch.long, device=_like(text_encoder)["device"])
    return count_flops(lambda: text_encoder(ids))


def _from_config(cls: type, folder: Path) -> nn.Module:
    """A diffusers model built from the config.json in `folder` (weights are not read)."""
    return cls.from_config(cls.load_config(folder))


def load_modules(model: str) -> tuple[dict[str, nn.Module], str]:
    """Build a model's U-Net, VAE and text encoder on the meta device; say where weights stand.

    Args:
        model: "sd14" for SD v1.4's architecture, or a local diffusers folder (or embedded model
            name) with unet/, vae/ and text_encoder/ configs; only the configs are read.
    """
    if model == "sd14":
        return build_sd14("meta"), "none loaded (SD v1.4 architecture, meta/random weights)"
    root = Path(resolve(model)).expanduser()
    if not all((root / sub / "config.json").is_file() for sub in ("unet", "vae", "text_encoder")):
        raise UserError(f"--model must be 'sd14' or a local diffusers folder, got {model!r}")
    with torch.device("meta"):
        modules: dict[str, nn.Module] = {
            "unet": _from_config(UNet2DConditionModel, root / "unet"),
            "vae": _from_config(AutoencoderKL, root / "vae"),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder")),
        }
    real = all(any(p.suffix in WEIGHT_SUFFIXES for p in (root / sub).iterdir()) for sub in modules)
    status = "real, in the folder" if real else "missing from the folder"
    return modules, f"{status} (architecture from {root}'s configs, measured on meta)"


@dataclass(frozen=True)
class ComponentStats:
    """One row of the anatomy table."""

    name: str
    params: int
    call: str  # what one call processes
    flops_per_call: int
    calls_per_image: int

    @property
    def flops_per_image(self) -> int:
        return self.flops_per_call * self.calls_per_image


def measure(modules: dict[str, nn.Module], height: int, width: int, steps: int = 50, cfg: bool = True) -> dict:
    """Parameters and FLOPs of each component for text-to-image sampling at height×width.

    With classifier-free guidance each step runs the U-Net on a batch of 2 (conditional and
    unconditional; Ho & Salimans 2022), and the text encoder encodes 2 prompts once.
    """
    unet, vae, text_encoder = modules["unet"], modules["vae"], modules["text_encoder"]
    batch = 2 if cfg else 1
    c, h, w = latent_shape(vae, height, width)
    px, lat = f"{vae.config.in_channels}×{height}×{width}", f"{c}×{h}×{w}"
    tokens = text_encoder.config.max_position_embeddings  # prompts are padded to it (77 for CLIP)
    unet_flops = unet_step_flops(unet, (h, w), batch, tokens)
    rows = [
        ComponentStats(
            "VAE encoder",
            count_params(vae.encoder, vae.quant_conv),
            f"1×{px} → 1×{lat}",
            vae_encode_flops(vae, height, width),
            0,
        ),
        ComponentStats(
            "VAE decoder",
            count_params(vae.decoder, vae.post_quant_conv),
            f"1×{lat} → 1×{px}",
            vae_decode_flops(vae, height, width),
            1,
        ),
        ComponentStats(
            "text encoder",
            count_params(text_encoder),
            f"{batch}×{tokens} tokens",
            text_encoder_flops(text_encoder, batch),
            1,
        ),
        ComponentStats("U-Net", count_params(unet), f"{batch}×{lat}, 1 step", unet_flops, steps),
    ]
    return {
        "height": height,
        "width": width,
        "image_shape": px,
        "latent_shape": [c, h, w],
        "compression": compression(vae, height, width),
        "steps": steps,
        "cfg": cfg,
        "unet_flops_per_sample": unet_flops // batch,
        "total_flops_per_image": sum(r.flops_per_image for r in rows),
        "components": [asdict(r) | {"flops_per_image": r.flops_per_image} for r in rows],
    }


def format_table(report: dict) -> str:
    """Render a `measure` report as a markdown table with a few summary lines."""
    header = "component | params | fp32 MB | fp16 MB | bf16 MB | one call | GFLOP/call | calls"
    lines = [f"| {header}/image | TFLOP/image |", "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in report["components"]:
        mb = [f"{r['params'] * BYTES_PER_PARAM[k] / 1e6:,.1f}" for k in BYTES_PER_PARAM]
        lines.append(
            f"| {r['name']} | {r['params']:,} | {' | '.join(mb)} | {r['call']} "
            f"| {r['flops_per_call'] / 1e9:,.1f} | {r['calls_per_image']} "
            f"| {r['flops_per_image'] / 1e12:.3f} |"
        )
    total = sum(r["params"] for r in report["components"])
    mb = [f"{total * BYTES_PER_PARAM[k] / 1e6:,.1f}" for k in BYTES_PER_PARAM]
    lines.append(
        f"| **total** | {total:,} | {' | '.join(mb)} | | | | **{report['total_flops_per_image'] / 1e12:.3f}** |"
    )
    c, h, w = report["latent_shape"]
    guidance = "with CFG (U-Net batch 2)" if report["cfg"] else "without CFG"
    lines += [
        "",
        f"- model: {report['model']}; weights: {report['weights']}",
        (f"- image {report['image_shape']} → latent {c}×{h}×{w}: {report['compression']:g}× compression"),
        f"- U-Net: {report['unet_flops_per_sample'] / 1e12:.3f} TFLOP per sample per step",
        (
            f"- one image, {report['steps']} steps {guidance}: "
            f"{report['total_flops_per_image'] / 1e12:.2f} TFLOP "
            "(FLOPs = 2 × multiply-adds; norms and activations not counted)"
        ),
    ]
    return "\n".join(lines)


def plot_flops(report: dict, path: str | Path) -> None:
    """Save a bar chart of GFLOP per call and TFLOP per generated image, by component."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["components"]
    names = [r["name"].replace(" ", "\n") for r in rows]
    fig, (per_call, per_image) = plt.subplots(1, 2, figsize=(10, 3.8))
    per_call.bar(names, [r["flops_per_call"] / 1e9 for r in rows], log=True)
    per_call.set_ylabel("GFLOP per call (log)")
    per_image.bar(names, [r["flops_per_image"] / 1e12 for r in rows])
    per_image.bar_label(per_image.containers[0], fmt="%.2f")
    per_image.set_ylabel(f"TFLOP per image ({report['steps']} steps)")
    per_image.margins(y=0.15)
    fig.suptitle(f"{report['model']} at {report['height']}×{report['width']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def anatomy(
    model: str = "sd14",
    height: int | None = None,
    width: int | None = None,
    steps: int = 50,
    cfg: bool = True,
    json: str | None = None,
    plot: str | None = None,
    tensorboard: str | None = None,
) -> dict:
    """Print parameters, weight bytes and FLOPs per component of a latent diffusion model.

    Args:
        model: "sd14" (SD v1.4's architecture, no weights needed) or a local diffusers folder.
        height: image height in pixels (default: the U-Net's training size, 512 for SD v1.4).
        width: image width in pixels (default: as height).
        steps: denoising steps per image.
        cfg: count classifier-free guidance (U-Net batch 2 per step).
        json: if given, write the numbers to this JSON file.
        plot: if given, save a bar chart of FLOPs per component to this PNG file.
        tensorboard: if given, log the table (and the chart) to a TensorBoard run in this folder.
    """
    modules, weights = load_modules(model)
    height = height or default_size(modules["unet"], modules["vae"])
    width = width or default_size(modules["unet"], modules["vae"])
    report = {"model": model, "weights": weights} | measure(modules, height, width, steps, cfg)
    print(format_table(report))
    if json:
        Path(json).write_text(jsonlib.dumps(report, indent=2) + "\n")
    if plot:
        plot_flops(report, plot)
    if tensorboard:
        log_table(tensorboard, "anatomy", format_table(report), plot)
    return report


if __name__ == "__main__":
    import sys

    from jsonargparse import auto_cli

    try:
        auto_cli(anatomy)
    except UserError as err:
        sys.exit(f"error: {err}")
