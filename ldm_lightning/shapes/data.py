"""Procedural caption–image pairs: one coloured shape on black, drawn from an integer index.

Nothing is stored: ``shape_at(index, split, seed)`` picks the attributes and ``render`` draws them, so a
data set of any length is reproducible from ``(seed, index)`` alone. Some colour–shape pairs are held
out of training (``HELD_OUT``) to measure compositional generalisation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset

SIZE_PX = 64
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
# Far apart in RGB (closest pair, purple–blue, is ~130 apart); no orange, which a tiny U-Net
# confuses with its neighbour yellow.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 220, 50),
    "purple": (170, 50, 200),
    "cyan": (50, 210, 220),
    "white": (235, 235, 235),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("center", "top", "bottom", "left", "right")
# One pair per shape and per colour (cyan and white keep all theirs), so every word is still trained.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("green", "star"), ("blue", "cross"), ("yellow", "circle"), ("purple", "square")}
)
SEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in itertools.product(COLOURS, SHAPES) if p not in HELD_OUT)
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in itertools.product(COLOURS, SHAPES) if p in HELD_OUT)

RADIUS = {"small": 8, "large": 13}  # half-extent in pixels, before ±1 jitter
OFFSET = 17  # distance of the four off-centre positions from the centre, in pixels
CENTRES: dict[str, tuple[int, int]] = {
    "center": (32, 32),
    "top": (32, 32 - OFFSET),
    "bottom": (32, 32 + OFFSET),
    "left": (32 - OFFSET, 32),
    "right": (32 + OFFSET, 32),
}
POSITION_PHRASES: dict[str, tuple[str, ...]] = {  # first entry is the canonical phrase
    "center": ("in the center", "in the middle"),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "left": ("on the left",),
    "right": ("on the right",),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        {"a", ","}
        | set(COLOURS)
        | set(SHAPES)
        | {w for phrases in POSITION_PHRASES.values() for p in phrases for w in p.split()}
        | {w for words in SIZE_WORDS.values() for w in words}
    )
)

Split = Literal["train", "held_out", "all"]
CaptionStyle = Literal["full", "short"]
_SPLIT_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": SEEN_PAIRS,
    "held_out": HELD_OUT_PAIRS,
    "all": SEEN_PAIRS + HELD_OUT_PAIRS,
}
_SPLIT_ID = {"train": 0, "held_out": 1, "all": 2}


@dataclass(frozen=True)
class Shape:
    """Attributes of one image; ``dx``, ``dy``, ``dr`` are pixel jitters of centre and radius."""

    shape: str
    colour: str
    size: str
    position: str
    dx: int = 0
    dy: int = 0
    dr: int = 0


def _rng(seed: int, split: Split, index: int) -> np.random.Generator:
    # SeedSequence over (seed, split, index): independent streams per item, stable across processes.
    return np.random.default_rng([seed, _SPLIT_ID[split], index])


def _draw_shape(rng: np.random.Generator, split: Split) -> Shape:
    pairs = _SPLIT_PAIRS[split]
    colour, shape = pairs[rng.integers(len(pairs))]
    size, position = SIZES[rng.integers(2)], POSITIONS[rng.integers(5)]
    dx, dy = (int(v) for v in rng.integers(-1, 2, size=2))
    return Shape(shape, colour, size, position, dx, dy, int(rng.integers(-1, 2)))


def shape_at(index: int, split: Split = "train", seed: int = 0) -> Shape:
    """Deterministic attributes for item ``index`` of ``split`` (pairs restricted to that split)."""
    if split not in _SPLIT_PAIRS:
        raise ValueError(f"split must be one of {tuple(_SPLIT_PAIRS)}, got {split!r}")
    return _draw_shape(_rng(seed, split, index), split)


def combos(split: Split) -> list[Shape]:
    """Every (colour, shape, size, position) of ``split`` once, unjittered: 300 seen, 50 held out."""
    return [
        Shape(shape, colour, size, position)
        for colour, shape in _SPLIT_PAIRS[split]
        for size in SIZES
        for position in POSITIONS
    ]


def eval_shapes(split: Split, seed: int = 1234, jittered: int = 300) -> list[Shape]:
    """Every unjittered combination of ``split`` plus ``jittered`` random draws: the recipes' evaluation set."""
    return combos(split) + [shape_at(i, split, seed) for i in range(jittered)]


def _polygon(name: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if name == "triangle":  # apex up, base 2r wide at 0.8r below centre: fills half its box
        return [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    if name == "star":  # five points, inner radius 0.45 of outer, first point straight up
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        return [(cx + q * np.cos(a), cy - q * np.sin(a)) for q, a in zip(radii, angles)]
    if name == "cross":  # plus sign, arms 0.66 r wide
        w = 0.33 * r
        return [
            (cx - w, cy - r),
            (cx + w, cy - r),
            (cx + w, cy - w),
            (cx + r, cy - w),
            (cx + r, cy + w),
            (cx + w, cy + w),
            (cx + w, cy + r),
            (cx - w, cy + r),
            (cx - w, cy + w),
            (cx - r, cy + w),
            (cx - r, cy - w),
            (cx - w, cy - w),
        ]
    return None


def draw_shape(draw: ImageDraw.ImageDraw, name: str, colour: str, cx: float, cy: float, r: float) -> None:
    """Paint one shape of half-extent ``r`` centred at (``cx``, ``cy``), in the drawing's own pixels."""
    fill = PALETTE[colour]
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif name == "square":  # 0.88 r so its area is close to the circle's
        h = 0.88 * r
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:
        draw.polygon(_polygon(name, cx, cy, r), fill=fill)


def render(shape: Shape, supersample: int = 4) -> Image.Image:
    """Draw ``shape`` on a black 64×64 RGB image, anti-aliased by drawing ``supersample``× larger."""
    s = supersample
    image = Image.new("RGB", (SIZE_PX * s, SIZE_PX * s))
    x0, y0 = CENTRES[shape.position]
    cx, cy, r = (x0 + shape.dx) * s, (y0 + shape.dy) * s, (RADIUS[shape.size] + shape.dr) * s
    draw_shape(ImageDraw.Draw(image), shape.shape, shape.colour, cx, cy, r)
    return image.resize((SIZE_PX, SIZE_PX), Image.Resampling.BOX)


def caption(shape: Shape, style: CaptionStyle | np.random.Generator = "full", with_position: bool = False) -> str:
    """Caption ``shape``: ``"full"`` template, ``"short"`` ("a red circle"), or varied from an rng.

    Varied captions drop, reorder and paraphrase attributes so short user prompts are in-distribution
    (a U-Net trained on one template answers only that template); ``with_position`` keeps the position
    phrase in a varied caption.
    """
    if style == "full":
        return f"a {shape.size} {shape.colour} {shape.shape} {POSITION_PHRASES[shape.position][0]}"
    if style == "short":
        return f"a {shape.colour} {shape.shape}"
    if not isinstance(style, np.random.Generator):
        raise ValueError(f"style must be 'full', 'short' or a numpy Generator, got {style!r}")
    rng = style
    full = rng.random() < 0.3
    words = []
    if full or rng.random() < 0.5:
        options = SIZE_WORDS[shape.size]
        words.append(options[rng.integers(len(options))])
    if full or rng.random() < 0.75:
        words.append(shape.colour)
    words.append(shape.shape)
    if rng.random() < 0.8:
        words.insert(0, "a")
    noun = " ".join(words)
    # Position named in 82.5% of varied captions, so CLIP and U-Net learn it (docs/results/tiny-shapes-position.md).
    if not (full or with_position or rng.random() < 0.75):
        return noun
    phrases = POSITION_PHRASES[shape.position]
    phrase = phrases[rng.integers(len(phrases))]
    return f"{phrase}, {noun}" if rng.random() < 0.25 else f"{noun} {phrase}"


def parse_caption(text: str) -> dict[str, str]:
    """Attributes a caption names, e.g. ``{"colour": "red", "shape": "circle"}``; unnamed ones are absent."""
    words = set(text.lower().replace(",", " ").split())
    found: dict[str, str] = {}
    for attribute, options in (
        ("colour", {c: (c,) for c in COLOURS}),
        ("shape", {s: (s,) for s in SHAPES}),
        ("size", SIZE_WORDS),
        ("position", {p: tuple(x.split()[-1] for x in v) for p, v in POSITION_PHRASES.items()}),
    ):
        for value, synonyms in options.items():
            if words & set(synonyms):
                found[attribute] = value
    return found


def matches(text: str, shape: Shape) -> bool:
    """Whether every attribute ``text`` names agrees with ``shape`` (an empty caption matches all)."""
    return all(getattr(shape, k) == v for k, v in parse_caption(text).items())


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image → float tensor 3×H×W in [-1, 1], the VAE's input range."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0


class ShapesDataset(Dataset):
    """``num_samples`` items ``{"prompt": str, "pixel_values": 3×64×64 in [-1, 1]}`` of ``split``.

    Args:
        num_samples: length of the data set (one epoch).
        split: ``"train"`` (seen pairs), ``"held_out"`` or ``"all"``.
        seed: data seed; item ``i`` depends only on ``(seed, split, i)``.
        p_empty_caption: probability of an empty prompt, for classifier-free guidance
            (Ho & Salimans 2022 train with 10–20% unconditional).
        caption_style: ``"varied"`` (training), ``"full"`` or ``"short"``.
    """

    def __init__(
        self,
        num_samples: int,
        split: Split = "train",
        seed: int = 0,
        p_empty_caption: float = 0.0,
        caption_style: Literal["varied", "full", "short"] = "varied",
    ) -> None:
        if num_samples < 1 or not 0.0 <= p_empty_caption <= 1.0:
            raise ValueError(
                f"need num_samples >= 1 and p_empty_caption in [0, 1], got {num_samples} and {p_empty_caption}"
            )
        self.num_samples, self.split, self.seed = num_samples, split, seed
        self.p_empty_caption, self.caption_style = p_empty_caption, caption_style

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, str | torch.Tensor]:
        rng = _rng(self.seed, self.split, index)
        shape = _draw_shape(rng, self.split)
        style = rng if self.caption_style == "varied" else self.caption_style
        prompt = caption(shape, style)
        if rng.random() < self.p_empty_caption:
            prompt = ""
        return {"prompt": prompt, "pixel_values": to_tensor(render(shape))}


class ShapesDataModule(L.LightningDataModule):
    """Training batches of procedurally drawn shapes with varied captions (seen pairs only).

    Args:
        batch_size: images per batch.
        num_samples: images per epoch.
        seed: data seed (items and shuffling order).
        p_empty_caption: probability of an empty prompt (classifier-free guidance dropout).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_samples: int = 50_000,
        seed: int = 0,
        p_empty_caption: float = 0.1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.dataset = ShapesDataset(num_samples, "train", seed, p_empty_caption)

    def train_dataloader(self) -> DataLoader:
        """Shuffled loader; the order is seeded so runs repeat exactly."""
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=self.num_workers,
            drop_last=True,
        )
