"""Opt-in fast mode (`model.fast`): the U-Net made faster in place, same images to float rounding.

On a GPU: channels-last weights (diffusers' own recipe for compiled convolutions) and
`torch.compile(mode="reduce-overhead", fullgraph=True)`, which fuses the elementwise work and replays
each step as one CUDA graph, removing the per-kernel launch cost that dominates SD's U-Net at small
batches. On a CPU there are no CUDA graphs and channels-last is slower, so it is the plain
`torch.compile`. `python -m ldm_lightning.lab.benchmark --fast` prints the speed-up and the difference
to the pipeline's images; the first batch of each shape pays the compilation. Measured speed-ups, with
their hardware, command and date: `docs/results/gpu-benchmark.md` and `docs/results/cpu-benchmark.md`.
"""

import torch
from torch import nn


def fast_settings(device: torch.device) -> dict:
    """What fast mode does on this device: the memory format and the `torch.compile` arguments."""
    if device.type == "cuda":
        return {"channels_last": True, "compile": {"mode": "reduce-overhead", "fullgraph": True}}
    return {"channels_last": False, "compile": {"fullgraph": True}}


def make_fast(unet: nn.Module) -> dict:
    """Apply fast mode to `unet` in place (same module object, same state_dict keys); returns the settings used.

    Idempotent: a U-Net already made fast is left as it is, so its compiled code is kept.
    """
    if hasattr(unet, "_ldm_fast"):
        return unet._ldm_fast
    settings = fast_settings(next(unet.parameters()).device)
    if settings["channels_last"]:
        unet.to(memory_format=torch.channels_last)
    unet.compile(**settings["compile"])
    unet._ldm_fast = settings
    return settings
