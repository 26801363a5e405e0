"""Real images for the embedded model's distribution metrics: the shapes its captions describe, drawn exactly.

    python -m ldm_lightning.shapes.reference outputs/shapes-reference --prompts configs/prompts/shapes-48.txt

Each caption is drawn `--per-prompt` times by `data.render` with seeded attributes: what the caption names
is kept, what it leaves open (size, position, colour…) and the ±1-pixel jitter of the training data are
drawn at random. The folder is what `--data.reference` takes.
"""

import argparse
from pathlib import Path

import numpy as np

from ldm_lightning.data import read_rows
from ldm_lightning.png import png_bytes
from ldm_lightning.run_folder.files import atomic_write, image_name
from ldm_lightning.shapes.data import COLOURS, POSITIONS, SHAPES, SIZES, Shape, parse_caption, render


def shape_for(prompt: str, rng: np.random.Generator) -> Shape:
    """A shape agreeing with everything `prompt` names; the rest, and the jitter, drawn from `rng`."""
    named = parse_caption(prompt)
    pick = lambda options: options[rng.integers(len(options))]  # noqa: E731
    return Shape(
        shape=named.get("shape") or pick(SHAPES),
        colour=named.get("colour") or pick(COLOURS),
        size=named.get("size") or pick(SIZES),
        position=named.get("position") or pick(POSITIONS),
        dx=int(rng.integers(-1, 2)),
        dy=int(rng.integers(-1, 2)),
        dr=int(rng.integers(-1, 2)),
    )


def draw_reference(out: Path, prompts: str | list[str], per_prompt: int = 1, seed: int = 0) -> list[Path]:
    """Draw `per_prompt` images of every prompt into `out` (PNG, named by row and prompt); returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for row in read_rows(prompts, seed):
        for k in range(per_prompt):
            rng = np.random.default_rng([seed, row["index"], k])
            name = image_name(row["index"] * per_prompt + k, row["prompt"])
            atomic_write(out / name, png_bytes(np.asarray(render(shape_for(row["prompt"], rng)))))
            files.append(out / name)
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Draw the shapes that prompts describe, as reference images.")
    parser.add_argument("out", type=Path, help="folder for the PNGs")
    parser.add_argument("--prompts", default="configs/prompts/shapes-48.txt", help=".txt (one per line) or table")
    parser.add_argument("--per-prompt", type=int, default=1, help="images per prompt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    files = draw_reference(args.out, args.prompts, args.per_prompt, args.seed)
    print(f"{len(files)} reference images in {args.out}")


if __name__ == "__main__":
    main()
