"""The inspection part: the same images, plus each image's attention maps and trajectory.

`Inspection.watch` observes one sampling call (the cross-attention recorder and the trajectory
callback) and gives, per image, what a run folder keeps beside its PNG (`inspection_files`):

- `<index>-<prompt>.attention.npz`: `words`; `word_of_token` (the word of each token position, -1
  for start, end and padding tokens); `maps` (words, H, W), each word's normalised heat map at image
  size; `tokens_<f>` (tokens, h, w), the raw summed probabilities of the layers at downsampling
  factor f; `factors` and `counts` (the head maps summed into each).
- `<index>-<prompt>.attention.png`: the image and one labelled overlay per word.
- `<index>-<prompt>.trajectory.png`: x̂₀ every k steps side by side at image size, the output image last.
"""

import io
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ldm_lightning.errors import UserError
from ldm_lightning.generation.sampling import Samples, to_uint8
from ldm_lightning.inspection.attention import (
    CrossAttentionRecorder,
    cross_attention_factors,
    prompt_words,
    word_maps,
)
from ldm_lightning.inspection.overlay import overlay_strip
from ldm_lightning.inspection.trajectory import Trajectory, strip
from ldm_lightning.png import png_bytes

InspectName = Literal["attention", "trajectory"]


@dataclass
class Inspection:
    """What to record while sampling (`model.inspect.*`), saved beside each image and shown in TensorBoard for
    the grid's first images; the images themselves do not change.

    Args:
        views: "attention": a heat map per prompt word from the U-Net's cross-attention (DAAM, Tang et al.
            2023), `<index>-<prompt>.attention.npz` and `.attention.png`; "trajectory": the predicted clean
            image x̂₀ every `trajectory_every` steps, `<index>-<prompt>.trajectory.png`.
        attention_factors: cross-attention layers to aggregate, by resolution as a downsampling factor of the
            latent (SD v1: 1 = 64², 2 = 32², 4 = 16², 8 = 8² at 512² pixels); default every layer (DAAM).
        attention_timesteps: [lowest, highest] diffusion timestep (0-1000 for SD) of the steps to aggregate,
            inclusive; default every step (DAAM).
        trajectory_every: keep x̂₀ after every this many denoising steps; the output image closes the strip.
    """

    views: list[InspectName] | None = None
    attention_factors: list[int] | None = None
    attention_timesteps: tuple[float, float] | None = None
    trajectory_every: int = 5

    def __post_init__(self) -> None:
        unknown = [v for v in self.views or [] if v not in InspectName.__args__]
        if unknown:
            raise UserError(f"model.inspect.views: unknown {unknown}; choose from {', '.join(InspectName.__args__)}")
        if self.trajectory_every < 1:
            raise UserError(f"model.inspect.trajectory_every: must be at least 1, got {self.trajectory_every}; try 5")
        steps = self.attention_timesteps
        if steps is not None and steps[0] > steps[1]:
            raise UserError(
                f"model.inspect.attention_timesteps: [lowest, highest] expected, got {list(steps)}; "
                "e.g. [0, 1000] for every step"
            )

    def check(self, unet, fast: bool = False) -> None:
        """Fail early when `attention_factors` names layers this U-Net does not have, or fast mode compiles it."""
        if fast and self.views:
            raise UserError(
                "model.inspect: records inside the U-Net, which fast mode compiles; use one of model.inspect "
                "and model.sampling.fast at a time"
            )
        available = sorted(set(cross_attention_factors(unet).values()))
        if self.attention_factors and not set(self.attention_factors) <= set(available):
            raise UserError(
                f"model.inspect.attention_factors: this U-Net has cross-attention at downsampling factors "
                f"{available}, got {self.attention_factors}; choose among those or leave it out for all"
            )

    def describe(self) -> str:
        """The settings in one line, e.g. "attention (factors all, timesteps all), trajectory (every 5)"."""
        parts = []
        if "attention" in (self.views or []):
            factors = ",".join(map(str, self.attention_factors)) if self.attention_factors else "all"
            steps = "-".join(f"{t:g}" for t in self.attention_timesteps) if self.attention_timesteps else "all"
            parts.append(f"attention (factors {factors}, timesteps {steps})")
        if "trajectory" in (self.views or []):
            parts.append(f"trajectory (every {self.trajectory_every})")
        return ", ".join(parts)

    @contextmanager
    def watch(self, components, scheduler, prompts: list[str], decode_fp32: bool = False):
        """Observe one sampling call: install the attention recorder for its duration and yield a `Watch`,
        whose `on_step` goes to the loop and whose `views(samples)` gives each image's results afterwards."""
        views = self.views or []
        recorder = None
        if "attention" in views:
            factors = list(self.attention_factors) if self.attention_factors else None
            recorder = CrossAttentionRecorder(components.unet, len(prompts), factors, self.attention_timesteps)
        trajectory = Trajectory(scheduler, self.trajectory_every) if "trajectory" in views else None
        with recorder if recorder is not None else nullcontext():
            yield Watch(components, prompts, recorder, trajectory, decode_fp32)


class Watch:
    """One sampling call under inspection: `on_step` for the loop, `views` once it has finished."""

    def __init__(self, components, prompts, recorder, trajectory, decode_fp32: bool) -> None:
        self.components, self.prompts = components, prompts
        self.recorder, self.trajectory, self.decode_fp32 = recorder, trajectory, decode_fp32
        self.on_step = trajectory

    def views(self, samples: Samples) -> list[dict[str, Any]]:
        """Per image, a dict of inspection results (empty when nothing is inspected)."""
        components, n = self.components, len(self.prompts)
        views: list[dict[str, Any]] = [{} for _ in range(n)]
        if self.recorder is not None:
            pixels = to_uint8(samples.images).permute(0, 2, 3, 1).cpu().numpy()
            size = tuple(samples.images.shape[-2:])
            tokens = components.tokenizer.model_max_length
            for i, prompt in enumerate(self.prompts):
                token_maps = {f: m[i] for f, m in self.recorder.maps.items()}
                views[i]["attention"] = attention_view(
                    components.tokenizer, prompt, token_maps, self.recorder.counts, size, pixels[i], tokens
                )
        if self.trajectory is not None:
            frames = self.trajectory.frames(components.vae, samples.images, force_fp32=self.decode_fp32)
            steps = [i + 1 for i in self.trajectory.indices] + [self.trajectory.steps]
            for i in range(n):
                views[i]["trajectory"] = {
                    "strip": to_uint8(strip(frames[i])).permute(1, 2, 0).cpu().numpy(),
                    "steps": steps,
                }
        return views


def attention_view(
    tokenizer, prompt: str, token_maps: dict[int, torch.Tensor], counts: dict[int, int], size, pixels, tokens: int
) -> dict[str, Any]:
    """One image's attention results as arrays: words, their maps, the raw token maps, an overlay picture."""
    words = prompt_words(tokenizer, prompt)
    maps = word_maps(token_maps, words, size).numpy()
    word_of_token = np.full(tokens, -1, dtype=np.int16)
    for w, word in enumerate(words):
        word_of_token[list(word.tokens)] = w
    texts = [w.text for w in words]
    return {
        "words": texts,
        "word_of_token": word_of_token,
        "maps": maps,
        "token_maps": {f: m.float().cpu().numpy() for f, m in token_maps.items()},
        "counts": dict(counts),
        "overlay": overlay_strip(pixels, maps, texts),
    }


def inspection_files(view: dict[str, Any]) -> dict[str, bytes]:
    """The files one image's inspection results are saved as: {suffix replacing ".png": bytes}."""
    files = {}
    if attention := view.get("attention"):
        factors = sorted(attention["token_maps"])
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            words=np.array(attention["words"], dtype=str),
            word_of_token=attention["word_of_token"],
            maps=attention["maps"].astype(np.float16),
            factors=np.array(factors, dtype=np.int32),
            counts=np.array([attention["counts"][f] for f in factors], dtype=np.int64),
            **{f"tokens_{f}": attention["token_maps"][f] for f in factors},
        )
        files[".attention.npz"] = buffer.getvalue()
        files[".attention.png"] = png_bytes(attention["overlay"])
    if trajectory := view.get("trajectory"):
        files[".trajectory.png"] = png_bytes(trajectory["strip"])
    return files
