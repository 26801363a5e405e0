"""Drawn shapes written as an image folder with captions (🤗 imagefolder layout), the data `fit` fine-tunes on.

    python -m ldm_lightning.shapes.folder OUT --pairs green:star --num_images 256 [--other_share 0.5]

Each image is one shape of a chosen colour–shape pair, in a random size and position, with a varied
caption (the embedded model's own caption style). `--other_share` mixes in that share of images of the
pairs the embedded model was trained on, so a fine-tune also keeps seeing what it already draws.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from ldm_lightning.shapes.data import COLOURS, POSITIONS, SEEN_PAIRS, SHAPES, SIZES, Shape, caption, render


def parse_pair(text: str) -> tuple[str, str]:
    """ "green:star" → ("green", "star"), with the embedded model's words only."""
    colour, _, shape = text.partition(":")
    if colour not in COLOURS or shape not in SHAPES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give colour:shape with a colour of {', '.join(COLOURS)} and a shape of {', '.join(SHAPES)}"
        )
    return colour, shape


def draw(pair: tuple[str, str], rng: np.random.Generator) -> Shape:
    """A shape of `pair` in a random size and position, jittered as the training data is."""
    dx, dy, dr = (int(v) for v in rng.integers(-1, 2, size=3))
    return Shape(pair[1], pair[0], SIZES[rng.integers(2)], POSITIONS[rng.integers(5)], dx, dy, dr)


def write_folder(
    out: str | Path, pairs: list[tuple[str, str]], num_images: int, seed: int = 0, other_share: float = 0.0
) -> Path:
    """Write `num_images` PNGs and their metadata.jsonl (`file_name`, `text`) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(num_images):
        others = rng.random() < other_share
        chosen = SEEN_PAIRS if others else pairs
        shape = draw(chosen[rng.integers(len(chosen))], rng)
        name = f"{i:05d}.png"
        render(shape).save(out / name)
        lines.append(json.dumps({"file_name": name, "text": caption(shape, rng)}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write (created if missing)")
    parser.add_argument("--pairs", type=parse_pair, nargs="+", default=[("green", "star")], help="colour:shape")
    parser.add_argument("--num_images", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--other_share", type=float, default=0.0, help="share of images of already-seen pairs")
    args = parser.parse_args()
    folder = write_folder(args.out, args.pairs, args.num_images, args.seed, args.other_share)
    print(f"{args.num_images} images with captions in {folder}")


if __name__ == "__main__":
    main()
