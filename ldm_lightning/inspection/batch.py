"""One sampling call with inspection: the same images, plus each image's attention maps and trajectory.

`generate_inspected` wraps `generate` with the cross-attention recorder and the trajectory callback
and returns, per image, what a run folder keeps beside its PNG (`inspection_files`):

- `<index>-<prompt>.attention.npz`: `words`; `word_of_token` (the word of each token position, -1
  for start, end and padding tokens); `maps` (words, H, W), each word's normalised heat map at image
  size; `tokens_<f>` (tokens, h, w), the raw summed probabilities of the layers at downsampling
  factor f; `factors` and `counts` (the head maps summed into each).
- `<index>-<prompt>.attention.png`: the image and one labelled overlay per word.
- `<index>-<prompt>.trajectory.png`: x̂₀ every k steps side by side at image size, the output image last.
"""

import io
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from ldm_lightning.generation.sampling import Samples, generate, to_uint8
from ldm_lightning.inspection.attention import CrossAttentionRecorder, prompt_words, word_maps
from ldm_lightning.inspection.overlay import overlay_strip
from ldm_lightning.inspection.trajectory import Trajectory, strip

InspectName = Literal["attention", "trajectory"]


@dataclass(frozen=True)
class InspectOptions:
    """What to look at during sampling (see `LatentDiffusionModule`'s `inspect*` arguments)."""

    kinds: tuple[str, ...] = ()
    attention_factors: tuple[int, ...] | None = None
    attention_timesteps: tuple[float, float] | None = None
    trajectory_every: int = 5


def generate_inspected(
    components,
    scheduler,
    prompts: list[str],
    negative_prompts: list[str],
    seeds: list[int],
    *,
    options: InspectOptions,
    decode_fp32: bool = False,
    **settings: Any,
) -> tuple[Samples, list[dict[str, Any]]]:
    """`generate`'s samples and, per image, a dict of inspection results (empty when `options.kinds` is)."""
    n = len(prompts)
    recorder = None
    if "attention" in options.kinds:
        factors = list(options.attention_factors) if options.attention_factors else None
        recorder = CrossAttentionRecorder(components.unet, n, factors, options.attention_timesteps)
    trajectory = Trajectory(scheduler, options.trajectory_every) if "trajectory" in options.kinds else None
    with recorder if recorder is not None else nullcontext():
        samples = generate(
            components,
            scheduler,
            prompts,
            negative_prompts,
            seeds,
            decode_fp32=decode_fp32,
            on_step=trajectory,
            **settings,
        )
    views: list[dict[str, Any]] = [{} for _ in range(n)]
    if recorder is not None:
        pixels = to_uint8(samples.images).permute(0, 2, 3, 1).cpu().numpy()
        size = tuple(samples.images.shape[-2:])
        tokens = components.tokenizer.model_max_length
        for i, prompt in enumerate(prompts):
            token_maps = {f: m[i] for f, m in recorder.maps.items()}
            views[i]["attention"] = attention_view(
                components.tokenizer, prompt, token_maps, recorder.counts, size, pixels[i], tokens
            )
    if trajectory is not None:
        frames = trajectory.frames(components.vae, samples.images, force_fp32=decode_fp32)
        steps = [i + 1 for i in trajectory.indices] + [trajectory.steps]
        for i in range(n):
            views[i]["trajectory"] = {
                "strip": to_uint8(strip(frames[i])).permute(1, 2, 0).cpu().numpy(),
                "steps": steps,
            }
    return samples, views


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
        files[".attention.png"] = _png(attention["overlay"])
    if trajectory := view.get("trajectory"):
        files[".trajectory.png"] = _png(trajectory["strip"])
    return files


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
