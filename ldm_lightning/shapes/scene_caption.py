"""Captions of scene claims in GenEval's phrasing, their varied training forms, and their GenEval metadata.

"a red circle", "two blue squares", "three stars", "a red circle and a yellow triangle", "a green square
left of a white star"; single shapes keep the single-shape data's captions ("a large red circle at the
top"). GenEval's metadata (``evaluation_metadata.jsonl`` records) says the same thing to its rules.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ldm_lightning.evaluation.geneval import COLORS
from ldm_lightning.shapes.data import (
    COLOURS,
    POSITION_PHRASES,
    SHAPES,
    SIZE_WORDS,
    VOCABULARY,
    Shape,
    caption,
    parse_caption,
)
from ldm_lightning.shapes.scene import CONVERSE, RELATIONS, Claim, Group, Scene, holds

NUMBERS = {1: "a", 2: "two", 3: "three", 4: "four"}
# Words scene captions add to the single-shape vocabulary (numbers, plurals, "and", the relations).
NEW_WORDS: tuple[str, ...] = tuple(
    sorted(
        (
            set(NUMBERS.values())
            | {"and"}
            | {w for r in RELATIONS for w in r.split()}
            | {"circles", "squares", "triangles", "stars", "crosses"}
        )
        - set(VOCABULARY)
    )
)
SCENE_VOCABULARY: tuple[str, ...] = tuple(sorted(set(VOCABULARY) | set(NEW_WORDS)))


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def group_phrase(group: Group, colour: bool = True, size: str | None = None) -> str:
    """ "a red circle", "three large stars": number, size word (``size``: the word to use, or the group's
    own canonical word when None), colour when named and ``colour``, then the noun."""
    words = [NUMBERS[group.count]]
    if group.size is not None and size != "":
        words.append(size or group.size)
    if group.colour is not None and colour:
        words.append(group.colour)
    words.append(group.shape if group.count == 1 else plural(group.shape))
    return " ".join(words)


def describe(claim: Claim) -> str:
    """The canonical caption of ``claim``."""
    if claim.place is not None:
        (g,) = claim.groups
        if g.colour is not None and g.size is not None:
            return caption(Shape(g.shape, g.colour, g.size, claim.place), "full")
        return f"{group_phrase(g)} {POSITION_PHRASES[claim.place][0]}"
    phrases = [group_phrase(g) for g in claim.groups]
    if claim.relation is not None:
        return f"{phrases[0]} {claim.relation} {phrases[1]}"
    return " and ".join(phrases)


def varied(claim: Claim, rng: np.random.Generator) -> str:
    """A training caption of ``claim`` that drops, reorders or rewords what it names, as the single-shape
    data's varied captions do (single shapes use exactly those). Every word it keeps is still true."""
    if claim.place is not None:
        (g,) = claim.groups
        return caption(Shape(g.shape, g.colour, g.size, claim.place), rng)
    phrases = []
    for g in claim.groups:
        words = SIZE_WORDS[g.size] if g.size is not None else ("",)
        size = words[rng.integers(len(words))] if rng.random() < 0.5 else ""
        phrases.append(group_phrase(g, colour=rng.random() < 0.8, size=size))
    if claim.relation is not None:
        if rng.random() < 0.5:  # "a square left of a star" is "a star right of a square"
            return f"{phrases[1]} {CONVERSE[claim.relation]} {phrases[0]}"
        return f"{phrases[0]} {claim.relation} {phrases[1]}"
    if len(phrases) == 2 and rng.random() < 0.5:
        phrases.reverse()
    return " and ".join(phrases)


def geneval_record(claim: Claim, tag: str | None = None, prompt: str | None = None) -> dict[str, Any] | None:
    """GenEval metadata for ``claim`` (tag, include, exclude, prompt), or None when it names a colour
    GenEval's colour classifier cannot answer (the palette's cyan).

    As GenEval writes them: a relation is the later include's, to the earlier one; a counting group of N
    excludes N + 1 of its class, so the count is exact. Size and place are not among GenEval's checks.
    """
    if any(g.colour is not None and g.colour not in COLORS for g in claim.groups):
        return None
    clauses = [
        {"class": g.shape, "count": g.count, **({"color": g.colour} if g.colour is not None else {})}
        for g in claim.groups
    ]
    if claim.relation is not None:
        clauses = [clauses[1], {**clauses[0], "position": [claim.relation, 0]}]
    excludes = [{"class": g.shape, "count": g.count + 1} for g in claim.groups if g.count > 1]
    if tag is None:
        kind = claim.kind
        named = all(g.colour is not None for g in claim.groups)
        tag = {
            "single": "colors" if named else "single_object",
            "two_object": "color_attr" if named else "two_object",
            "counting": "counting",
            "position": "position",
        }[kind]
    record: dict[str, Any] = {"tag": tag, "include": clauses}
    if excludes:
        record["exclude"] = excludes
    record["prompt"] = prompt if prompt is not None else describe(claim)
    return record


_COUNT_WORDS = {w: n for n, w in NUMBERS.items()}
_NOUNS = {**{s: (s, 1) for s in SHAPES}, **{plural(s): (s, 2) for s in SHAPES}}
_SIZES = {w: size for size, words in SIZE_WORDS.items() for w in words}


def _phrase_fits(words: list[str], obj) -> bool:
    """Whether one object has every attribute a noun phrase's words name (colour, size)."""
    return all(obj.colour == w for w in words if w in COLOURS) and all(
        obj.size == _SIZES[w] for w in words if w in _SIZES
    )


def matches_scene(text: str, scene: Scene) -> bool:
    """Whether every attribute, count and relation ``text`` names holds in ``scene`` (an empty text fits all).

    A phrase for one shape ("a red circle") needs at least one such object, as GenEval's includes do; a
    number ("three stars") needs exactly that many of the shape. A place ("at the top") is the single-shape
    data's and fits only a single-shape scene at that place. Used for contrastive targets, where treating
    a fitting caption as a negative would push apart pairs that are in fact correct.
    """
    if not text.strip():
        return True
    words = text.lower().replace(",", " ").split()
    joined = " ".join(words)
    relation = next((r for r in RELATIONS if f" {r} " in f" {joined} "), None)
    place = parse_caption(text).get("position") if relation is None else None  # "left of" is no place
    if place is not None:
        return scene.claim.place == place and all(_phrase_fits(words, o) and o.shape in words for o in scene.objects)
    parts = joined.split(f" {relation} ") if relation else joined.split(" and ")
    chosen = []
    for part in parts:
        tokens = part.split()
        nouns = [_NOUNS[t] for t in tokens if t in _NOUNS]
        if len(nouns) != 1:
            return False
        shape, plural_noun = nouns[0]
        count = next((_COUNT_WORDS[t] for t in tokens if t in _COUNT_WORDS), 1)
        fitting = [o for o in scene.objects if o.shape == shape and _phrase_fits(tokens, o)]
        same_shape = [o for o in scene.objects if o.shape == shape]
        if (plural_noun > 1 and (len(same_shape) != count or len(fitting) != count)) or not fitting:
            return False
        chosen.append(fitting)
    if relation is None:
        return True
    return len(chosen) == 2 and any(holds(relation, a, b) for a in chosen[0] for b in chosen[1])
