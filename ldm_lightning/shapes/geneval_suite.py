"""A GenEval-format prompt suite in the embedded model's words, judged by its pixel judge.

    python -m ldm_lightning.shapes.geneval_suite configs/prompts/shapes-geneval.jsonl

Single objects and colours are the embedded model's world (one shape per image, a palette colour);
two objects, counting, relative position and colour attribution need several shapes in one image,
which it never saw, so those prompts score near zero by design: they show what a task outside the
training data looks like, not a fault of the rules.
"""

import json
import sys
from pathlib import Path
from typing import Any

from ldm_lightning.evaluation.geneval import COLORS
from ldm_lightning.shapes.data import COLOURS, SHAPES

# The palette colours GenEval can name (its ten colours have no cyan).
SUITE_COLOURS = tuple(c for c in COLOURS if c in COLORS)


def suite() -> list[dict[str, Any]]:
    """GenEval metadata records: every shape alone, every shape in every nameable colour, and a few of the rest."""
    one = lambda shape, **extra: {"class": shape, "count": 1, **extra}  # noqa: E731
    records = [{"tag": "single_object", "include": [one(s)], "prompt": f"a {s}"} for s in SHAPES]
    records += [
        {"tag": "colors", "include": [one(s, color=c)], "prompt": f"a {c} {s}"} for c in SUITE_COLOURS for s in SHAPES
    ]
    pairs = list(zip(SHAPES, SHAPES[1:]))
    records += [{"tag": "two_object", "include": [one(a), one(b)], "prompt": f"a {a} and a {b}"} for a, b in pairs]
    records += [
        {
            "tag": "counting",
            "include": [{"class": s, "count": 2}],
            "exclude": [{"class": s, "count": 3}],
            "prompt": f"two {s}s",
        }
        for s in SHAPES[:4]
    ]
    records += [
        {"tag": "position", "include": [one(b), one(a, position=["left of", 0])], "prompt": f"a {a} left of a {b}"}
        for a, b in pairs
    ]
    colours = list(zip(SUITE_COLOURS, SUITE_COLOURS[1:]))
    records += [
        {"tag": "color_attr", "include": [one(a, color=ca), one(b, color=cb)], "prompt": f"a {ca} {a} and a {cb} {b}"}
        for (a, b), (ca, cb) in zip(pairs, colours)
    ]
    return records


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "configs/prompts/shapes-geneval.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in suite()))
    print(f"{out}: {len(suite())} prompts")


if __name__ == "__main__":
    main()
