"""Does the embedded model attend where it draws? Attention maps scored against the pixel judge's shape masks.

    python -m ldm_lightning.lab.attention_check --out docs

For the embedded tiny-shapes model the truth is known: the pixel judge (`shapes/judge.py`, no neural
network) finds the drawn shape's mask. For full captions ("a large red circle at the top") of seen and
held-out colour–shape pairs, each image's per-word cross-attention maps (`inspection/attention.py`)
are scored, per layer resolution and for all layers together, against that mask:

- peak inside: the map's highest pixel lies inside the mask; chance is the mask's share of the image;
- peak in the shape's latent cell: the 8×8-pixel cell (one latent pixel, the finest place the U-Net can
  attend to) that holds the map's highest pixel also holds part of the shape; chance is the share of
  cells the shape touches;
- IoU: the map thresholded at DAAM's τ = 0.4 (Tang et al. 2023) against the mask (DAAM's mIoU check).

Each is reported for maps summed over every step (DAAM) and over the late steps alone (`--late`,
timesteps 0–300 by default), where the image's layout is settled.

Writes `results/attention.md` (table, settings, time and memory) and `images/attention_overlays.png` under `--out`
(the docs folder by default).
"""

import argparse
import platform
import resource
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldm_lightning.generation.components import load_components
from ldm_lightning.generation.guidance import ClassifierFreeGuidance
from ldm_lightning.generation.sampling import generate, to_uint8
from ldm_lightning.generation.schedulers import build_scheduler
from ldm_lightning.inspection.attention import DAAM_THRESHOLD, CrossAttentionRecorder, prompt_words, word_maps
from ldm_lightning.inspection.overlay import overlay_strip
from ldm_lightning.shapes.data import POSITION_PHRASES, Shape
from ldm_lightning.shapes.evaluate import prompt_sets
from ldm_lightning.shapes.judge import shape_mask

WORD_KINDS = ("shape", "colour", "size", "position")


def peak_inside(heat: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the heat map's highest pixel (the first, if tied) lies inside the mask."""
    return bool(mask.flat[int(np.argmax(heat))])


def threshold_iou(heat: np.ndarray, mask: np.ndarray, threshold: float = DAAM_THRESHOLD) -> float:
    """Intersection over union of {heat >= threshold} and the mask (0 when both are empty)."""
    region = heat >= threshold
    union = np.logical_or(region, mask).sum()
    return float(np.logical_and(region, mask).sum() / union) if union else 0.0


def cells_of(mask: np.ndarray, cell: int) -> np.ndarray:
    """Which `cell`×`cell` blocks of the image the mask touches (a boolean grid)."""
    h, w = mask.shape
    return mask.reshape(h // cell, cell, w // cell, cell).any(axis=(1, 3))


def peak_in_cell(heat: np.ndarray, touched: np.ndarray, cell: int) -> bool:
    """Whether the block that holds the heat map's highest pixel is one the shape touches."""
    y, x = divmod(int(np.argmax(heat)), heat.shape[1])
    return bool(touched[y // cell, x // cell])


def word_of(shape: Shape, kind: str) -> str:
    """The caption word naming an attribute: the shape, the colour, the size, the position's last word."""
    if kind == "position":
        return POSITION_PHRASES[shape.position][0].split()[-1]
    return {"shape": shape.shape, "colour": shape.colour, "size": shape.size}[kind]


def score_batch(
    components, prompts, shapes, seeds, steps: int, guidance: float, timesteps: tuple[int, int] | None = None
) -> tuple[list[dict], dict]:
    """Generate with the recorder on; per image, word kind and resolution: peak inside, IoU, peak in cell."""
    scheduler = build_scheduler("ddim", components.scheduler_config)
    with CrossAttentionRecorder(components.unet, len(prompts), timesteps=timesteps) as recorder:
        samples = generate(
            components, scheduler, ClassifierFreeGuidance(guidance), prompts, [""] * len(prompts), seeds,
            num_inference_steps=steps, eta=0.0, height=64, width=64,
        )  # fmt: skip
    map_bytes = sum(m.numel() * m.element_size() for m in recorder.maps.values())
    pixels = to_uint8(samples.images).permute(0, 2, 3, 1).numpy()
    factors = sorted(recorder.maps)
    cell = pixels.shape[1] // recorder.latent_size[0]  # image pixels per latent pixel
    scored = []
    for i, (prompt, shape) in enumerate(zip(prompts, shapes)):
        mask = shape_mask(pixels[i])
        words = prompt_words(components.tokenizer, prompt)
        texts = [w.text for w in words]
        token_maps = {f: recorder.maps[f][i] for f in factors}
        per_resolution = {"all": word_maps(token_maps, words, (64, 64)).numpy()}
        for f in factors:
            per_resolution[f] = word_maps(token_maps, words, (64, 64), factors=[f]).numpy()
        touched = cells_of(mask, cell)
        row = {"prompt": prompt, "pixels": pixels[i], "mask_share": float(mask.mean()), "words": texts}
        row["cell_share"] = float(touched.mean())
        row["maps"] = per_resolution["all"]
        for kind in WORD_KINDS:
            w = texts.index(word_of(shape, kind))
            for resolution, maps in per_resolution.items():
                heat = maps[w]
                scores = (peak_inside(heat, mask), threshold_iou(heat, mask), peak_in_cell(heat, touched, cell))
                row[kind, resolution] = scores if mask.any() else None
        scored.append(row)
    return scored, {"map_bytes": map_bytes, "factors": factors, "latent": tuple(recorder.latent_size)}


def rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clocks() -> np.ndarray:
    """(wall, this process's CPU) seconds: on shared cores the CPU time is the steadier cost."""
    return np.array([time.perf_counter(), time.process_time()])


def timed_plain(components, prompts, seeds, steps: int, guidance: float) -> np.ndarray:
    """(wall, CPU) seconds of the same generation without recording."""
    start = clocks()
    generate(
        components, build_scheduler("ddim", components.scheduler_config), ClassifierFreeGuidance(guidance), prompts,
        [""] * len(prompts), seeds, num_inference_steps=steps, eta=0.0, height=64, width=64,
    )  # fmt: skip
    return clocks() - start


def wilson_interval(hits: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (Wilson 1927; scipy's), sound at small n and near 0 or 1."""
    from scipy.stats import binomtest

    interval = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)


def summarize(rows: list[dict], resolutions: list) -> dict:
    """Per (word kind, resolution): peak-inside rate with its interval and mean IoU, over images with a shape."""
    judged = [r for r in rows if r["mask_share"] > 0]
    out = {"n": len(judged), "chance": float(np.mean([r["mask_share"] for r in judged]))}
    out["cell_chance"] = float(np.mean([r["cell_share"] for r in judged]))
    for kind in WORD_KINDS:
        for resolution in resolutions:
            values = [r[kind, resolution] for r in judged]
            hits, cell_hits = sum(v[0] for v in values), sum(v[2] for v in values)
            out[kind, resolution] = {
                "inside": hits / len(values),
                "interval": wilson_interval(hits, len(values)),
                "iou": float(np.mean([v[1] for v in values])),
                "cell": cell_hits / len(values),
                "cell_interval": wilson_interval(cell_hits, len(values)),
            }
    return out


def summary_table(summary: dict, resolutions: list, names: dict) -> list[str]:
    """Markdown rows of `summarize`'s results."""
    lines = [
        "| word | layers | peak inside the shape (95% CI) | chance | peak in the shape's latent cell (95% CI) "
        "| chance | mean IoU (τ = 0.4) |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in WORD_KINDS:
        for resolution in resolutions:
            s = summary[kind, resolution]
            low, high = s["interval"]
            cell_low, cell_high = s["cell_interval"]
            lines.append(
                f"| {kind} | {names[resolution]} | {s['inside']:.0%} ({low:.0%}–{high:.0%}) | {summary['chance']:.0%} "
                f"| {s['cell']:.0%} ({cell_low:.0%}–{cell_high:.0%}) | {summary['cell_chance']:.0%} | {s['iou']:.2f} |"
            )
    return lines


def findings(summary: dict, resolutions: list, names: dict) -> list[str]:
    """What the table says, word by word: the best layers for each word and how it compares with chance."""
    lines = []
    for kind in WORD_KINDS:
        best = max(resolutions, key=lambda r: summary[kind, r]["inside"])
        s = summary[kind, best]
        ratio = s["inside"] / summary["chance"]
        lines.append(
            f"- **{kind}** word: peak inside the shape for {s['inside']:.0%} of images at its best layers "
            f"({names[best]}), {ratio:.1f}× chance; in the shape's latent cell for {s['cell']:.0%} "
            f"({s['cell'] / summary['cell_chance']:.1f}× chance); IoU {s['iou']:.2f}."
        )
    return lines


def overlay_figure(rows: list[dict], shapes: list[Shape], path: Path, count: int = 5) -> None:
    """The first `count` images with the overlays of their colour, shape, size and position words, stacked."""
    strips = []
    for row, shape in list(zip(rows, shapes))[:count]:
        chosen = [row["words"].index(word_of(shape, kind)) for kind in ("colour", "size", "shape", "position")]
        strips.append(overlay_strip(row["pixels"], row["maps"][chosen], [row["words"][w] for w in chosen]))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(strips, axis=0)).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs", help="docs folder: results/attention.md and images/")
    parser.add_argument("--per-set", type=int, default=50, help="prompts per set (seen, held-out)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--late", type=int, nargs=2, default=(0, 300), metavar=("LOW", "HIGH"),
        help="the timestep range of the second table (the late, low-noise steps)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    components = load_components("tiny-shapes")
    sets = prompt_sets(args.per_set, args.seed)
    items = sets["seen full"] + sets["held-out full"]
    prompts, shapes = [p for p, _ in items], [s for _, s in items]
    seeds = [args.seed + i for i in range(len(prompts))]
    timed_plain(components, prompts[:2], seeds[:2], 2, args.guidance)  # warm-up, so neither timing below pays it
    rows, rss_after_batch, info = [], [], {}
    for start in range(0, len(prompts), args.batch_size):
        part = slice(start, start + args.batch_size)
        if start == 0:  # the cost of recording, on the first batch: the same generation without it, then with it
            plain = timed_plain(components, prompts[part], seeds[part], args.steps, args.guidance)
            began = clocks()
        scored, info = score_batch(components, prompts[part], shapes[part], seeds[part], args.steps, args.guidance)
        if start == 0:
            inspected = clocks() - began
            first = len(scored)
        rows += scored
        rss_after_batch.append(rss_mb())
    late_rows = []
    for start in range(0, len(prompts), args.batch_size):
        part = slice(start, start + args.batch_size)
        late_rows += score_batch(
            components, prompts[part], shapes[part], seeds[part], args.steps, args.guidance, tuple(args.late)
        )[0]
    resolutions = [*info["factors"], "all"]
    h, w = info["latent"]
    names = {f: f"{-(-h // f)}² (factor {f})" for f in info["factors"]} | {"all": "all"}
    summary = summarize(rows, resolutions)
    table = summary_table(summary, resolutions, names)
    late = summarize(late_rows, resolutions)
    late_table = summary_table(late, resolutions, names)
    judged = sum(r["mask_share"] > 0 for r in rows)
    overlay_figure(rows, shapes, out / "images" / "attention_overlays.png")
    n = len(prompts)
    text = [
        "# Does the embedded model attend where it draws?",
        "",
        f"`python -m ldm_lightning.lab.attention_check --out {args.out} --per-set {args.per_set}` "
        f"on {platform.processor() or 'CPU'}, "
        f"2 CPU cores, {args.threads} thread(s), {date.today().isoformat()}.",
        "",
        f'{n} full captions ("a large red circle at the top"): {args.per_set} of seen colour–shape pairs and '
        f"{args.per_set} of held-out ones, all five positions equally often; tiny-shapes, DDIM {args.steps} steps, "
        f"guidance {args.guidance}, one seed per prompt. Maps aggregate the conditional half of every "
        "cross-attention layer, head and timestep (DAAM's choice; `ldm_lightning/inspection/attention.py`), per "
        "word, each resolution upsampled bilinearly to 64² and scaled to [0, 1]. The truth is the pixel judge's "
        f"mask of the drawn shape (`shapes/judge.py`); {judged} of {n} images have one and are scored.",
        "",
        "## Every step (DAAM)",
        "",
        *table,
        "",
        *findings(summary, resolutions, names),
        "",
        f"## Late steps only (timesteps {args.late[0]}–{args.late[1]}, `CrossAttentionRecorder(timesteps=...)`)",
        "",
        "The same prompts and seeds (the same images); the maps sum only the steps whose timestep lies in the range.",
        "",
        *late_table,
        "",
        *findings(late, resolutions, names),
        "",
        "Peak inside: the word's map is highest inside the shape; chance is the shape's share of the image, how "
        "often a peak placed uniformly at random lands inside. Peak in the shape's latent cell: the 8×8-pixel block "
        f"(one of the {h}×{w} latent pixels, the finest place the U-Net can attend to) that holds the peak also "
        "holds part of the shape; chance is the share of blocks the shape touches. The maps are at most "
        f"{-(-h // min(info['factors']))}² before upsampling, so a peak can miss a small shape's pixels while "
        "pointing at its place. IoU: the map thresholded at τ = 0.4 (DAAM's segmentation threshold, Tang et al. "
        "2023) against the mask.",
        "",
        "![overlays](../images/attention_overlays.png)",
        "",
        "Each row: the image, then the maps (all layers) of its colour, size, shape and position words "
        "(dark = low, yellow = high).",
        "",
        "## Cost (every step recorded)",
        "",
        f"- Seconds per image on the first batch ({first} images, {args.threads} thread), wall / CPU: "
        f"{plain[0] / first:.2f} / {plain[1] / first:.2f} without recording, {inspected[0] / first:.2f} / "
        f"{inspected[1] / first:.2f} with it (word maps and scoring included). The cores were shared with other "
        "work, so wall times vary between runs.",
        f"- Maps held while a batch samples: {info['map_bytes'] / 1024:.0f} KiB for {args.batch_size} images "
        f"({info['map_bytes'] / args.batch_size / 1024:.1f} KiB each; tokens × Σ h·w float32 values per image, "
        "whatever the number of steps). SD v1 at 512²: 77 × (64² + 32² + 16² + 8²) × 4 B = 1.6 MiB per image.",
        f"- Peak resident memory after each batch (MiB): {', '.join(f'{v:.0f}' for v in rss_after_batch)}.",
        "",
    ]
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "results" / "attention.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
