"""Quality of the embedded tiny-shapes model: does it draw what the prompt says?

    python -m ldm_lightning.shapes.evaluate --out outputs/tiny-eval

For seen and held-out colour–shape pairs at all five positions, with full captions ("a large red circle
at the top"), short ones ("red circle on the left") and reordered ones ("on the left a big red circle"),
it generates one image per prompt at the default settings and at guidance 1, and reports accuracy by

- the pixel judge (`ldm_lightning.shapes.judge`: no neural network involved): colour, shape, position,
  and size where the prompt names one, and
- the tiny CLIP's zero-shot choice among all "a {colour} {shape}" captions,

plus the tiny CLIP's own zero-shot position accuracy on drawn images (its text tower is the U-Net's
text encoder), its CLIPScore at guidance 1 → 2 → 3 → 5 → 7.5 and seconds per image. Writes
`quality.md`, `quality.json`, `clip_vs_guidance.png` and `cfg_lift.png` (the same prompts and seeds
at guidance 1 and at the default).
"""

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPModel

from ldm_lightning.evaluation.clip_score import clip_source, load_clip, score_images
from ldm_lightning.generation.components import load_components
from ldm_lightning.generation.guidance import ClassifierFreeGuidance
from ldm_lightning.generation.sampling import generate, to_uint8
from ldm_lightning.generation.schedulers import build_scheduler
from ldm_lightning.shapes.clip import zero_shot as clip_zero_shot
from ldm_lightning.shapes.data import (
    COLOURS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    SIZE_WORDS,
    Shape,
    caption,
    combos,
    eval_shapes,
    parse_caption,
)
from ldm_lightning.shapes.judge import judge

GUIDANCE_CURVE = [1.0, 2.0, 3.0, 5.0, 7.5]


def reordered(shape: Shape) -> str:
    """Position first, no comma, the other size word: "on the left a big red circle" (a form training never writes)."""
    return f"{POSITION_PHRASES[shape.position][0]} a {SIZE_WORDS[shape.size][1]} {shape.colour} {shape.shape}"


def prompt_sets(per_set: int, seed: int) -> dict[str, list[tuple[str, Shape]]]:
    """Prompt sets with their intended attributes: {seen, held-out} × {full, short, reordered}.

    Each set draws ``per_set`` combinations of its split, all five positions equally often.
    """
    rng = np.random.default_rng(seed)
    sets = {}
    for split, name in (("train", "seen"), ("held_out", "held-out")):
        by_position = [[s for s in combos(split) if s.position == p] for p in POSITIONS]
        chosen = [group[i] for group in by_position for i in rng.permutation(len(group))[: per_set // 5]]
        sets[f"{name} full"] = [(caption(s, "full"), s) for s in chosen]
        sets[f"{name} short"] = [(f"{s.colour} {s.shape} {POSITION_PHRASES[s.position][0]}", s) for s in chosen]
        sets[f"{name} reordered"] = [(reordered(s), s) for s in chosen]
    return sets


def zero_shot(clip, images: torch.Tensor) -> list[tuple[str, str]]:
    """The tiny CLIP's choice of (colour, shape) for each uint8 image among all 35 short captions."""
    model, processor = clip
    pairs = list(itertools.product(COLOURS, SHAPES))
    with torch.no_grad():
        text = processor(text=[f"a {c} {s}" for c, s in pairs], return_tensors="pt", padding=True)
        t = model.get_text_features(text["input_ids"], text["attention_mask"])
        pix = processor(images=[i for i in images], return_tensors="pt")["pixel_values"]
        v = model.get_image_features(pix)
    sims = torch.nn.functional.normalize(v, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T
    return [pairs[i] for i in sims.argmax(dim=1).tolist()]


def sample(
    components,
    prompts: list[str],
    seeds: list[int],
    guidance: float,
    scheduler: str = "ddim",
    steps: int = 25,
    batch_size: int = 50,
) -> tuple[torch.Tensor, float]:
    """uint8 64×64 images for the prompts (no negative prompt, η 0), and seconds per image."""
    out, start = [], time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        s = generate(
            components,
            build_scheduler(scheduler, components.scheduler_config),
            ClassifierFreeGuidance(guidance),
            prompts[i : i + batch_size],
            [""] * len(prompts[i : i + batch_size]),
            seeds[i : i + batch_size],
            num_inference_steps=steps,
            eta=0.0,
            height=64,
            width=64,
        )
        out.append(to_uint8(s.images))
    return torch.cat(out), (time.perf_counter() - start) / len(prompts)


def accuracy(images: torch.Tensor, prompts: list[str], shapes: list[Shape], clip) -> dict[str, float | None]:
    """Share of images right per attribute; size only over prompts that name one (None if none do)."""
    verdicts = [judge(img.permute(1, 2, 0).numpy()) for img in images]
    choices = zero_shot(clip, images)
    n = len(shapes)
    sized = [(v, s) for v, s, p in zip(verdicts, shapes, prompts) if "size" in parse_caption(p)]
    return {
        "judge colour": sum(v.colour == s.colour for v, s in zip(verdicts, shapes)) / n,
        "judge shape": sum(v.shape == s.shape for v, s in zip(verdicts, shapes)) / n,
        "judge position": sum(v.position == s.position for v, s in zip(verdicts, shapes)) / n,
        "judge size": sum(v.size == s.size for v, s in sized) / len(sized) if sized else None,
        "clip colour": sum(c == s.colour for (c, _), s in zip(choices, shapes)) / n,
        "clip shape": sum(k == s.shape for (_, k), s in zip(choices, shapes)) / n,
    }


def clip_position_accuracy(name_or_path: str) -> dict[str, float]:
    """The tiny CLIP's zero-shot position accuracy on drawn images, seen and held-out pairs."""
    source = clip_source(name_or_path)
    model, tokenizer = CLIPModel.from_pretrained(source).eval(), AutoTokenizer.from_pretrained(source)
    return {split: clip_zero_shot(model, tokenizer, eval_shapes(split))["position"] for split in ("train", "held_out")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-shapes")
    parser.add_argument("--clip", default="tiny-clip")
    parser.add_argument("--scheduler", default="ddim")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0, help="the default guidance to evaluate")
    parser.add_argument("--per-set", type=int, default=50, help="prompts per set (6 sets)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/tiny-eval"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    components, clip = load_components(args.model), load_clip(args.clip)
    sets = prompt_sets(args.per_set, args.seed)
    report: dict = {"settings": vars(args) | {"out": str(args.out)}, "sets": {}}
    lines = [
        f"Model {args.model}, {args.scheduler} {args.steps} steps, judged by the pixel judge and by {args.clip} "
        "zero-shot; one image per prompt, seed = prompt index.",
        "",
        "| prompts | n | guidance | judge colour | judge shape | judge position | judge size "
        "| CLIP colour | CLIP shape "
        "| s/img |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lift = {}
    for name, items in sets.items():
        prompts, shapes = [p for p, _ in items], [s for _, s in items]
        seeds = list(range(len(prompts)))
        for guidance in (1.0, args.guidance):
            images, seconds = sample(components, prompts, seeds, guidance, args.scheduler, args.steps, args.batch_size)
            acc = accuracy(images, prompts, shapes, clip)
            report["sets"][f"{name} @ {guidance:g}"] = {**acc, "n": len(prompts), "seconds_per_image": seconds}
            lines.append(
                f"| {name} | {len(prompts)} | {guidance:g} | "
                + " | ".join("–" if v is None else f"{v:.0%}" for v in acc.values())
                + f" | {seconds:.3f} |"
            )
            if name == "seen full":
                lift[guidance] = images[:8]
    curve = {}
    prompts, shapes = zip(*sets["seen full"])
    for guidance in GUIDANCE_CURVE:
        images, _ = sample(
            components, list(prompts), list(range(len(prompts))), guidance, args.scheduler, args.steps, args.batch_size
        )
        curve[guidance] = float(np.mean(score_images(images, list(prompts), clip)))
    report["clip_score_vs_guidance"] = curve
    lines += [
        "",
        "| guidance | " + " | ".join(f"{g:g}" for g in curve) + " |",
        "|---|" + "---|" * len(curve),
        "| tiny-CLIP score, seen full | " + " | ".join(f"{v:.2f}" for v in curve.values()) + " |",
    ]
    positions = clip_position_accuracy(args.clip)
    report["clip_zero_shot_position"] = positions
    lines += [
        "",
        f"{args.clip} zero-shot position on drawn images (choice among all 350 full captions): "
        f"{positions['train']:.1%} seen, {positions['held_out']:.1%} held out.",
    ]
    save_plots(curve, lift, args.out)
    (args.out / "quality.json").write_text(json.dumps(report, indent=2))
    (args.out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def save_plots(curve: dict[float, float], lift: dict[float, torch.Tensor], out: Path) -> None:
    """CLIPScore vs guidance, and a two-row picture: guidance 1 above the default."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(list(curve), list(curve.values()), marker="o", label="tiny-shapes, tiny CLIP (this run)")
    ax.set_xlabel("classifier-free guidance scale")
    ax.set_ylabel("CLIPScore")
    ax.set_title(
        "CLIPScore rises with guidance, as in SD v1.4's model card\n(SD: COCO 10k, 50 PLMS, CLIP ViT-L/14)", fontsize=8
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "clip_vs_guidance.png", dpi=120)
    rows = [np.concatenate(list(v.permute(0, 2, 3, 1).numpy()), axis=1) for v in lift.values()]
    Image.fromarray(np.concatenate(rows, axis=0)).resize((8 * 128, len(rows) * 128), Image.NEAREST).save(
        out / "cfg_lift.png"
    )


if __name__ == "__main__":
    main()
