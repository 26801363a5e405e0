"""A pixel judge for the shapes data: colour, shape, size and position from mask geometry alone.

``judge`` reads the one shape of a single-shape image; ``find_objects`` reads every shape of a scene,
one connected component each. No neural network is involved, so the judge is independent of every
model it scores. The shape templates below are written from their geometric definitions, not drawn
with ``shapes.render``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from ldm_lightning.shapes.data import CENTRES, PALETTE, SHAPES

TEMPLATE_PX = 32
LARGE_MIN_EXTENT = 19.5  # px; small shapes span ≤ 18, large ones ≥ 21 (see shapes.RADIUS)
FOREGROUND_MIN = 60  # max-channel level a foreground pixel must exceed on 0–255
MIN_PIXELS = 6  # smaller components are specks, not shapes (a small shape covers about 200 pixels)


@dataclass(frozen=True)
class Found:
    """One object of a scene: the judge's verdict on it alone, its box (x0, y0, x1, y1) and its H×W mask."""

    shape: str
    colour: str
    size: str
    box: tuple[float, float, float, float]
    mask: np.ndarray = field(compare=False)


@dataclass(frozen=True)
class Verdict:
    """What the judge sees; attributes are ``"none"`` when no foreground was found."""

    colour: str
    shape: str
    size: str
    position: str


def _templates(n: int = TEMPLATE_PX) -> dict[str, np.ndarray]:
    # Pixel-centre grid over each shape's own bounding box, mapped to [-1, 1]².
    t = (np.arange(n) + 0.5) / n * 2 - 1
    y, x = np.meshgrid(t, t, indexing="ij")
    # Star: polar test against the boundary of a 5-point star (inner/outer 0.45), stretched to its box.
    ys = -1 + (y + 1) / 2 * (1 + np.cos(np.pi / 5))  # box spans up = 1 to down = cos 36°
    xs = x * np.sin(2 * np.pi / 5)
    angle = np.mod(np.arctan2(-ys, xs) - np.pi / 2 + np.pi / 5, 2 * np.pi / 5) - np.pi / 5  # 0 at a point
    inner, outer = 0.45, 1.0
    # Edge from point (angle 0, outer) to valley (angle ±36°, inner): radial limit along direction.
    p = np.array([outer, 0.0])
    v = np.array([inner * np.cos(np.pi / 5), inner * np.sin(np.pi / 5)])
    d = v - p
    ca, sa = np.cos(np.abs(angle)), np.sin(np.abs(angle))
    limit = (p[0] * d[1] - p[1] * d[0]) / (ca * d[1] - sa * d[0])
    return {
        "circle": (x**2 + y**2 <= 1).astype(np.float32),
        "square": np.ones_like(x, dtype=np.float32),
        "triangle": (np.abs(x) <= (y + 1) / 2).astype(np.float32),
        "star": (np.hypot(xs, ys) <= limit).astype(np.float32),
        "cross": ((np.abs(x) <= 0.33) | (np.abs(y) <= 0.33)).astype(np.float32),
    }


TEMPLATES = _templates()
assert set(TEMPLATES) == set(SHAPES)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 8-connected component of a boolean mask."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    ids, counts = np.unique(labels[mask], return_counts=True)
    return labels == ids[np.argmax(counts)]


def _to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image H×W×3, got {array.dtype} {array.shape}")
    return array


def _blob(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """The shape's mask, the per-pixel level and the shape's typical brightness; None on a blank image."""
    level = rgb.max(axis=2).astype(np.float32)
    if level.max() <= FOREGROUND_MIN:
        return None
    blob = _largest_component(level > FOREGROUND_MIN)
    # Half of the blob's typical brightness marks the edge of an anti-aliased (or blurred) shape.
    peak = float(np.percentile(level[blob], 90))
    return _largest_component(level > max(FOREGROUND_MIN, 0.5 * peak)), level, peak


def shape_mask(image: Image.Image | np.ndarray) -> np.ndarray:
    """The pixels of the drawn shape as the judge finds them: bool H×W, all False on a blank image."""
    rgb = _to_array(image)
    found = _blob(rgb)
    return found[0] if found is not None else np.zeros(rgb.shape[:2], dtype=bool)


def judge(image: Image.Image | np.ndarray) -> Verdict:
    """Judge one RGB image (PIL or uint8 H×W×3, 64×64 like ``shapes.render``)."""
    rgb = _to_array(image)
    found = _blob(rgb)
    if found is None:
        return Verdict("none", "none", "none", "none")
    blob, level, peak = found
    core = blob & (level >= 0.75 * peak)
    mean = rgb[core].astype(np.float32).mean(axis=0)
    colour = min(PALETTE, key=lambda c: float(np.sum((np.array(PALETTE[c]) - mean) ** 2)))

    rows, cols = np.nonzero(blob)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    # Soft coverage keeps anti-aliased edge pixels at partial weight: a small cross's arms are 4-5 px.
    coverage = np.where(blob, np.clip(level / peak, 0.0, 1.0), 0.0).astype(np.float32)
    crop = Image.fromarray(coverage[top:bottom, left:right], mode="F")
    soft = np.asarray(crop.resize((TEMPLATE_PX, TEMPLATE_PX), Image.Resampling.BILINEAR))
    # Soft intersection-over-union with each template, each normalised to the blob's bounding box.
    ious = {k: float(np.minimum(soft, t).sum() / np.maximum(soft, t).sum()) for k, t in TEMPLATES.items()}
    shape = max(ious, key=ious.get)

    size = "large" if max(bottom - top, right - left) >= LARGE_MIN_EXTENT else "small"
    cy, cx = (top + bottom) / 2, (left + right) / 2
    scale = rgb.shape[0] / 64  # CENTRES are in 64-pixel coordinates
    position = min(CENTRES, key=lambda p: (CENTRES[p][0] * scale - cx) ** 2 + (CENTRES[p][1] * scale - cy) ** 2)
    return Verdict(colour, shape, size, position)


def alone(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with everything outside ``mask`` (dilated by a pixel, to keep anti-aliased edges) set to black."""
    keep = ndimage.binary_dilation(mask, structure=np.ones((3, 3), dtype=bool))
    return np.where(keep[..., None], image, 0).astype(np.uint8)


def find_objects(image: Image.Image | np.ndarray) -> list[Found]:
    """Every shape of an RGB image: each 8-connected foreground component of at least ``MIN_PIXELS``,
    judged alone, in reading order of the components' first pixels."""
    rgb = _to_array(image)
    labels, count = ndimage.label(rgb.max(axis=2) > FOREGROUND_MIN, structure=np.ones((3, 3), dtype=bool))
    found = []
    for index in range(1, count + 1):
        mask = labels == index
        if mask.sum() < MIN_PIXELS:
            continue
        rows, cols = np.nonzero(mask)
        box = (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))
        verdict = judge(alone(rgb, mask))
        found.append(Found(verdict.shape, verdict.colour, verdict.size, box, mask))
    return found
