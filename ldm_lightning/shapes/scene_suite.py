"""GenEval's six tasks in the scene world's words: a prompt suite judged by the pixel judge.

    python -m ldm_lightning.shapes.scene_suite configs/prompts/scenes-geneval.jsonl

How many prompts. A task's accuracy is a mean over prompts, each with four images, and GenEval's
interval resamples prompts (a prompt's images share its difficulty). With m = 4 images per prompt and
an intra-prompt correlation ρ, the variance of the accuracy is p(1 − p)(1 + (m − 1)ρ) / (n m) over n
prompts; a 95% half-width of 0.05 at the worst case p = 0.5 needs n ≥ 96 (1 + 3ρ): 97 prompts if images
were independent (ρ = 0), 385 if a prompt's four images always agreed (ρ = 1). ``PROMPTS_PER_TASK`` =
200 covers ρ ≤ 0.36 at p = 0.5, and any ρ once a task's accuracy is above 0.85 or below 0.15. The
prompts of a task are spread evenly over its fixed strata (shape, shape pair, count, colour pair …),
so resampling prompts without regard to strata, as the interval does, errs on the wide side.

Where a task's checked content has fewer than 200 distinct requests (five shapes alone; fifteen
shape–count pairs), prompts also differ in words the rules do not check, as GenEval's own prompts differ
in their object words: a size word (small, little, large, big) and, for single objects, a place. Counting
prompts name a colour in 125 of 200 (checked, as the rules check every colour a prompt names), because
colour-free counting has only 75 distinct wordings. Only GenEval's colours are named: the palette's cyan
is not among them.
"""

import hashlib
import itertools
import json
import sys
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ldm_lightning.evaluation.geneval import TASKS
from ldm_lightning.shapes.data import POSITION_PHRASES, SHAPES
from ldm_lightning.shapes.geneval_suite import SUITE_COLOURS
from ldm_lightning.shapes.scene import RELATIONS, Claim, Group
from ldm_lightning.shapes.scene_caption import geneval_record, group_phrase

PROMPTS_PER_TASK = 200
SIZE_WORDS = {"": None, "small": "small", "little": "small", "large": "large", "big": "large"}  # word → size
PLACE_WORDS = [(place, phrase) for place, phrases in POSITION_PHRASES.items() for phrase in phrases]
PAIRS = [(a, b) for a, b in itertools.permutations(SHAPES, 2)]

Candidate = tuple[Hashable, Claim, str]  # stratum, claim, prompt


def _group(shape: str, count: int = 1, colour: str | None = None, word: str = "") -> tuple[Group, str]:
    group = Group(shape, count, colour, SIZE_WORDS[word])
    return group, group_phrase(group, size=word)


def _single_object() -> Iterable[Candidate]:
    for shape, word in itertools.product(SHAPES, SIZE_WORDS):
        group, noun = _group(shape, word=word)
        yield shape, Claim((group,)), noun
        for place, phrase in PLACE_WORDS:
            yield shape, Claim((group,), place=place), f"{noun} {phrase}"
            yield shape, Claim((group,), place=place), f"{phrase}, {noun}"


def _diagonal(rows: Sequence, columns: Sequence) -> list[tuple]:
    """Every (row, column) pair, in diagonals: any run of whole diagonals from the start uses each row
    equally often, and the columns as evenly as the run allows (the strata a partial round of ``_spread``
    serves first)."""
    return [(r, columns[(i + k) % len(columns)]) for k in range(len(columns)) for i, r in enumerate(rows)]


def _colors() -> Iterable[Candidate]:
    for (shape, colour), word in itertools.product(_diagonal(SHAPES, SUITE_COLOURS), SIZE_WORDS):
        group, noun = _group(shape, colour=colour, word=word)
        yield (colour, shape), Claim((group,)), noun
        for place, phrases in POSITION_PHRASES.items():
            yield (colour, shape), Claim((group,), place=place), f"{noun} {phrases[0]}"


def _two_object() -> Iterable[Candidate]:
    for (a, b), word_a, word_b in itertools.product(PAIRS, SIZE_WORDS, SIZE_WORDS):
        (ga, pa), (gb, pb) = _group(a, word=word_a), _group(b, word=word_b)
        yield (a, b), Claim((ga, gb)), f"{pa} and {pb}"


def _counting() -> Iterable[Candidate]:
    for shape, count, colour, word in itertools.product(SHAPES, (2, 3, 4), (None, *SUITE_COLOURS), SIZE_WORDS):
        group, phrase = _group(shape, count, colour, word)
        yield (shape, count, colour is None), Claim((group,)), phrase


def _position() -> Iterable[Candidate]:
    sizes = ("", "small", "large")
    for ((a, b), relation), word_a, word_b in itertools.product(_diagonal(PAIRS, RELATIONS), sizes, sizes):
        (ga, pa), (gb, pb) = _group(a, word=word_a), _group(b, word=word_b)
        yield (a, b, relation), Claim((ga, gb), relation), f"{pa} {relation} {pb}"


def _color_attr() -> Iterable[Candidate]:
    for (a, b), (ca, cb) in itertools.product(PAIRS, itertools.permutations(SUITE_COLOURS, 2)):
        (ga, pa), (gb, pb) = _group(a, colour=ca), _group(b, colour=cb)
        yield (a, b), Claim((ga, gb)), f"{pa} and {pb}"


CANDIDATES: dict[str, Callable[[], Iterable[Candidate]]] = {
    "single_object": _single_object,
    "two_object": _two_object,
    "counting": _counting,
    "colors": _colors,
    "position": _position,
    "color_attr": _color_attr,
}
assert tuple(CANDIDATES) == TASKS


def _spread(candidates: Iterable[Candidate], n: int) -> list[Candidate]:
    """``n`` candidates taken in turn from each stratum (strata in first-seen order), each stratum's in the
    order of its prompts' SHA-256: even over strata, arbitrary within one, the same on every platform."""
    strata: dict[Hashable, list[Candidate]] = {}
    for c in candidates:
        strata.setdefault(c[0], []).append(c)
    queues = [sorted(s, key=lambda c: hashlib.sha256(c[2].encode()).hexdigest()) for s in strata.values()]
    chosen: list[Candidate] = []
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} distinct prompts for {n}")
    return chosen


def suite(per_task: int = PROMPTS_PER_TASK) -> list[dict[str, Any]]:
    """GenEval metadata records, ``per_task`` for each of the six tasks, in task order."""
    records = []
    for task, candidates in CANDIDATES.items():
        for _, claim, prompt in _spread(candidates(), per_task):
            records.append(geneval_record(claim, tag=task, prompt=prompt))
    return records


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "configs/prompts/scenes-geneval.jsonl")
    records = suite()
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"{out}: {len(records)} prompts")


if __name__ == "__main__":
    main()
