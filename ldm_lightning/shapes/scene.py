"""Scenes of one to four shapes on black, drawn from an integer index, and what a caption claims of them.

A ``Claim`` is what a caption says: one or two groups (``count`` shapes of one kind, perhaps a named
colour and size), and either a relation between the two groups ("left of") or, for a single shape, one
of the five places of the single-shape data. ``scene_at(index, split, seed)`` draws a claim and the
objects that make it true, so a scene is reproducible from ``(seed, split, index)`` and nothing is stored.

Single shapes are the single-shape data's own items (``data.shape_at``'s attributes, colour–shape pairs
and jitter), placed on the larger canvas at its five places scaled by ``SCALE``. Shapes keep the
single-shape data's pixel sizes (``data.RADIUS``): the tiny VAE's 4× downsampling then sees them as it
always has, and "small" and "large" mean the same pixels in both worlds.

Why 96²: four large shapes (boxes up to 28 px) with ``MIN_GAP`` between them need 2 × 28 + 6 = 62 px a
side; at 64² that leaves 2 px of play, so four shapes could only sit in one fixed 2×2 grid, and relations
would come from the grid rather than from placement. Shrinking the shapes to fit 64² would take small
shapes below the 16 px at which the VAE already caps the judged shape accuracy. At 96² they land anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from ldm_lightning.shapes.data import (
    _SPLIT_ID,
    _SPLIT_PAIRS,
    CENTRES,
    RADIUS,
    SHAPES,
    SIZE_PX,
    SIZES,
    Split,
    _draw_shape,
    draw_shape,
)

CANVAS_PX = 96
SCALE = CANVAS_PX / SIZE_PX  # the single-shape places, in canvas pixels
MIN_GAP = 6  # px of black between two objects' boxes: 1.5 latent cells at the VAE's 4× downsampling
EDGE = 2  # px kept black along the canvas border
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
CONVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
Kind = Literal["single", "two_object", "counting", "position"]
# Share of each kind in the world. Single shapes keep the single-shape data's own distribution within their share.
KIND_SHARES: dict[str, float] = {"single": 0.4, "two_object": 0.2, "counting": 0.2, "position": 0.2}
# Group sizes of two-group scenes: mostly one of each, sometimes more, four shapes at most.
GROUP_COUNTS: tuple[tuple[int, int], ...] = ((1, 1),) * 6 + ((2, 1), (1, 2), (2, 2), (3, 1), (1, 3))


@dataclass(frozen=True)
class Group:
    """``count`` shapes of one kind; ``colour`` / ``size`` are None when the claim does not name one."""

    shape: str
    count: int = 1
    colour: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class Claim:
    """What a caption says: one or two groups, a relation (groups[0] to groups[1]) or a single shape's place."""

    groups: tuple[Group, ...]
    relation: str | None = None
    place: str | None = None

    @property
    def kind(self) -> Kind:
        if self.relation is not None:
            return "position"
        if len(self.groups) == 2:
            return "two_object"
        return "counting" if self.groups[0].count > 1 else "single"


@dataclass(frozen=True)
class Placed:
    """One drawn object: kind, palette colour, size word, centre and half-extent in canvas pixels."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    r: int

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The square the shape fits in (x0, y0, x1, y1); every shape's own extent lies inside it."""
        return (self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r)


@dataclass(frozen=True)
class Scene:
    """A claim and the objects drawn for it; ``objects`` list each group's shapes in the claim's order."""

    claim: Claim
    objects: tuple[Placed, ...]


def _gap(a: Placed | tuple, b: Placed | tuple) -> float:
    """Black pixels between two boxes along the axis that separates them most (negative when they overlap)."""
    a, b = (p.box if isinstance(p, Placed) else p for p in (a, b))
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


def holds(relation: str, a: Placed, b: Placed) -> bool:
    """Whether ``a`` is ``relation`` ``b`` in the world: boxes apart along the relation's axis, and the
    offset across it at most half the offset along it (image y grows downwards)."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if relation in ("left of", "right of"):
        sign = -1 if relation == "left of" else 1
        return sign * dx >= a.r + b.r + MIN_GAP and abs(dy) <= abs(dx) / 2
    sign = -1 if relation == "above" else 1
    return sign * dy >= a.r + b.r + MIN_GAP and abs(dx) <= abs(dy) / 2


def place(
    rng: np.random.Generator, objects: list[Placed], relation: str | None = None, canvas: int = CANVAS_PX
) -> tuple[Placed, ...] | None:
    """``objects`` moved to random whole-pixel centres, ``MIN_GAP`` apart; with ``relation``, the first
    object stands in it to the second. None when 200 tries find no room."""
    for _ in range(200):
        placed: list[Placed] = []
        for obj in objects:
            for _ in range(50):
                lo, hi = EDGE + obj.r, canvas - EDGE - obj.r
                cx, cy = (float(v) for v in rng.integers(lo, hi + 1, size=2))
                candidate = Placed(obj.shape, obj.colour, obj.size, cx, cy, obj.r)
                if all(_gap(candidate, other) >= MIN_GAP for other in placed) and not (
                    relation is not None and len(placed) == 1 and not holds(relation, placed[0], candidate)
                ):
                    placed.append(candidate)
                    break
            else:
                break
        if len(placed) == len(objects):
            return tuple(placed)
    return None


def _colours_for(shape: str, split: Split) -> list[str]:
    return [c for c, s in _SPLIT_PAIRS[split] if s == shape]


def _group_objects(rng: np.random.Generator, group: Group, split: Split, mixed_colours: bool) -> list[Placed]:
    colours = _colours_for(group.shape, split)
    found = []
    for _ in range(group.count):
        colour = group.colour if not mixed_colours else colours[rng.integers(len(colours))]
        size = group.size if group.size is not None else SIZES[rng.integers(2)]
        found.append(Placed(group.shape, colour, size, 0.0, 0.0, RADIUS[size] + int(rng.integers(-1, 2))))
    return found


def _group(rng: np.random.Generator, shape: str, count: int, split: Split, colour: str | None = None) -> Group:
    """A group of ``shape`` whose colour (one of the split's pairs) is named and whose size is named in 30%."""
    if colour is None:
        colours = _colours_for(shape, split)
        colour = colours[rng.integers(len(colours))]
    size = SIZES[rng.integers(2)] if rng.random() < 0.3 else None
    return Group(shape, count, colour, size)


def _draw_claim(rng: np.random.Generator, kind: str, split: Split) -> Claim:
    shapes = [s for s in SHAPES if _colours_for(s, split)]
    if kind == "counting":
        shape = shapes[rng.integers(len(shapes))]
        count = int(rng.integers(2, 5))
        # Half the counting scenes mix colours and name none, so a count is learnt apart from a colour.
        return Claim((_group(rng, shape, count, split) if rng.random() < 0.5 else Group(shape, count),))
    a, b = (shapes[i] for i in rng.choice(len(shapes), size=2, replace=False))
    if kind == "position":
        return Claim((_group(rng, a, 1, split), _group(rng, b, 1, split)), RELATIONS[rng.integers(4)])
    n_a, n_b = GROUP_COUNTS[rng.integers(len(GROUP_COUNTS))]
    return Claim((_group(rng, a, n_a, split), _group(rng, b, n_b, split)))


def realise(rng: np.random.Generator, claim: Claim, split: Split = "train") -> tuple[Placed, ...] | None:
    """Objects that make ``claim`` true, placed on the canvas (None when they do not fit)."""
    objects = [o for g in claim.groups for o in _group_objects(rng, g, split, mixed_colours=g.colour is None)]
    return place(rng, objects, claim.relation)


def scene_at(index: int, split: Split = "train", seed: int = 0) -> Scene:
    """Deterministic scene ``index`` of ``split``: its kind by ``KIND_SHARES``, then its claim and objects."""
    if split not in _SPLIT_PAIRS:
        raise ValueError(f"split must be one of {tuple(_SPLIT_PAIRS)}, got {split!r}")
    # Streams apart from the single-shape data's ([seed, split, index]) by a fourth word.
    rng = np.random.default_rng([seed, _SPLIT_ID[split], index, 1])
    kinds = list(KIND_SHARES)
    kind = kinds[rng.choice(len(kinds), p=list(KIND_SHARES.values()))]
    if kind == "single":
        return single_scene(_draw_shape(rng, split))
    while True:  # every claim fits (four large shapes take 62 of 96 px a side); the loop only retries bad luck
        claim = _draw_claim(rng, kind, split)
        objects = realise(rng, claim, split)
        if objects is not None:
            return Scene(claim, objects)


def single_scene(shape) -> Scene:
    """A single-shape item (``data.Shape``) as a scene: its place scaled to the canvas, its jitter kept."""
    x0, y0 = CENTRES[shape.position]
    obj = Placed(shape.shape, shape.colour, shape.size, x0 * SCALE + shape.dx, y0 * SCALE + shape.dy,
                 RADIUS[shape.size] + shape.dr)  # fmt: skip
    return Scene(Claim((Group(shape.shape, 1, shape.colour, shape.size),), place=shape.position), (obj,))


def render_scene(objects: tuple[Placed, ...] | list[Placed], supersample: int = 4) -> Image.Image:
    """Draw ``objects`` on a black ``CANVAS_PX``² RGB image, anti-aliased as ``data.render`` is."""
    s = supersample
    image = Image.new("RGB", (CANVAS_PX * s, CANVAS_PX * s))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_shape(draw, obj.shape, obj.colour, obj.cx * s, obj.cy * s, obj.r * s)
    return image.resize((CANVAS_PX, CANVAS_PX), Image.Resampling.BOX)
