"""The embedded model learns its held-out green star from a folder of drawn stars: a LoRA fine-tune, judged.

    python -m ldm_lightning.shapes.lora_demo --out outputs/lora-green-star [--steps 150]

tiny-shapes never saw a green star in training (`HELD_OUT`); it draws most as stars anyway, but about
one large green star in eight comes out as another shape (docs/results/lora-green-star.md). This writes a
folder of drawn green stars with captions (mixed with already-seen pairs), fine-tunes LoRA adapters
on it with `fit` (image folder, validation scored during training), and measures with the pixel
judge, before and after, how often the shape and colour are right: on green-star prompts with seeds
used nowhere else, and on the seen colour–shape pairs, which should keep their accuracy.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ldm_lightning.shapes.data import POSITION_PHRASES, combos
from ldm_lightning.shapes.evaluate import sample
from ldm_lightning.shapes.folder import write_folder
from ldm_lightning.shapes.judge import judge

EVAL_SEED = 900_000  # evaluation seeds start here: neither training nor validation uses them
VAL_PROMPTS = ["a green star", "a large green star on the left", "a small green star at the top", "a red circle"]


def prompt_set(pairs: set[tuple[str, str]], split: str, n: int, seed: int) -> list[tuple[str, object]]:
    """`n` full captions of `split`'s combinations of `pairs` (every size and position), with their shapes."""
    shapes = [s for s in combos(split) if (s.colour, s.shape) in pairs] if pairs else combos(split)
    order = np.random.default_rng(seed).permutation(len(shapes))
    chosen = [shapes[order[i % len(shapes)]] for i in range(n)]
    return [(f"a {s.size} {s.colour} {s.shape} {POSITION_PHRASES[s.position][0]}", s) for s in chosen]


def judged(components, rows: list[tuple[str, object]], seed: int) -> tuple[dict[str, float], torch.Tensor]:
    """Share of images whose shape, colour, and both, the pixel judge finds as the prompt asks; the images."""
    prompts = [p for p, _ in rows]
    images, _ = sample(components, prompts, [seed + i for i in range(len(rows))], guidance=3.0)
    verdicts = [judge(image.permute(1, 2, 0).numpy()) for image in images]
    n = len(rows)
    large = [v.shape == s.shape for v, (_, s) in zip(verdicts, rows) if s.size == "large"]
    return {
        "shape": sum(v.shape == s.shape for v, (_, s) in zip(verdicts, rows)) / n,
        # Apart, because the judge reads the model's small stars (about 16 px across) as circles, seen colours too.
        "shape_large": sum(large) / max(1, len(large)),
        "colour": sum(v.colour == s.colour for v, (_, s) in zip(verdicts, rows)) / n,
        "both": sum(v.shape == s.shape and v.colour == s.colour for v, (_, s) in zip(verdicts, rows)) / n,
        "n": n,
    }, images


def judge_sets(components, sets: dict[str, list]) -> tuple[dict[str, dict], list[torch.Tensor]]:
    """`judged` for each prompt set, and the first 10 images of each set (for the grid)."""
    scores, firsts = {}, []
    for name, rows in sets.items():
        scores[name], images = judged(components, rows, EVAL_SEED)
        firsts.append(images[:10])
    return scores, firsts


def save_grid(path: Path, rows: list[list[torch.Tensor]]) -> None:
    """One row of images per model (before, after): each set's first images side by side, uint8 (3, H, W)."""
    from PIL import Image

    grid = torch.cat([torch.cat([image for images in row for image in images], dim=2) for row in rows], dim=1)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def fine_tune(folder: Path, out: Path, steps: int, rank: int, learning_rate: float) -> Path:
    """LoRA on tiny-shapes from the image folder, with validation every steps/10; the LoRA file's path."""
    from lightning import Trainer
    from lightning.pytorch.loggers import TensorBoardLogger

    from ldm_lightning.cli import LdmCLI
    from ldm_lightning.finetune.images import ImageCaptionDataModule
    from ldm_lightning.finetune.method import LoRA, WarmupCosine
    from ldm_lightning.generation.export import ExportDiffusers
    from ldm_lightning.module import LatentDiffusionModule

    module = LatentDiffusionModule("tiny-shapes", finetune=LoRA(rank=rank))
    # The optimizer as the command line's --optimizer / --lr_scheduler would build it.
    module.configure_optimizers = lambda: LdmCLI.configure_optimizers(
        module, optimizer := torch.optim.AdamW(module.parameters(), lr=learning_rate), WarmupCosine(optimizer, 20)
    )
    data = ImageCaptionDataModule(
        str(folder), batch_size=32, p_empty_caption=0.1, val_prompts=VAL_PROMPTS, val_batch_size=4
    )
    logger = TensorBoardLogger(str(out), name="tensorboard", version="")
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        val_check_interval=max(1, steps // 10),
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=logger,
        enable_checkpointing=False,
        callbacks=[ExportDiffusers()],
        default_root_dir=str(out),
    )
    trainer.validate(module, data)  # logged at step 0 (a sanity check is not): the curve starts at the base model
    trainer.fit(module, data)
    return Path(trainer.log_dir) / "lora"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/lora-green-star")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-2)
    parser.add_argument("--num_images", type=int, default=512)
    parser.add_argument("--other_share", type=float, default=0.5)
    parser.add_argument("--per_set", type=int, default=100, help="prompts per evaluation set")
    parser.add_argument("--lora", help="judge this trained LoRA instead of fitting one (same prompts and seeds)")
    # One thread: on 2 busy cores torch's second thread waited more than it worked (a U-Net step took 4x longer).
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    folder = write_folder(out / "images", [("green", "star")], args.num_images, seed=0, other_share=args.other_share)
    sets = {
        "green star (held out)": prompt_set({("green", "star")}, "held_out", args.per_set, seed=1),
        "seen pairs": prompt_set(set(), "train", args.per_set, seed=2),
    }
    from ldm_lightning.finetune.lora import LoraFile
    from ldm_lightning.module import LatentDiffusionModule

    base = LatentDiffusionModule("tiny-shapes").components
    before, before_images = judge_sets(base, sets)
    start = time.perf_counter()
    lora = Path(args.lora) if args.lora else fine_tune(folder, out, args.steps, args.rank, args.learning_rate)
    minutes = (time.perf_counter() - start) / 60
    tuned = LatentDiffusionModule("tiny-shapes", lora=LoraFile(str(lora))).components
    after, after_images = judge_sets(tuned, sets)
    save_grid(out / "before_after.png", [before_images, after_images])
    results = {"args": vars(args), "fit_minutes": minutes, "lora": str(lora), "before": before, "after": after}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"fit: {args.steps} steps in {minutes:.1f} min; LoRA {lora}\n")
    keys = ("shape", "shape_large", "colour", "both")
    print("| prompts | n | " + " | ".join(f"{k} before | {k} after" for k in keys) + " |")
    print("|---|---|" + "---|---|" * len(keys))
    for name in sets:
        b, a = before[name], after[name]
        cells = " | ".join(f"{b[k]:.0%} | {a[k]:.0%}" for k in keys)
        print(f"| {name} | {b['n']} | {cells} |")


if __name__ == "__main__":
    main()
