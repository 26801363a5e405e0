"""Pictures of the attention maps: each prompt word's heat map laid over the image, labelled."""

import numpy as np
from PIL import Image, ImageDraw

PANEL_PX = 128  # small images (the embedded model's 64²) are enlarged so that the labels stay legible
LABEL_PX = 16
ALPHA = 0.55  # the heat map's weight over the image


def heat_colours(values: np.ndarray) -> np.ndarray:
    """[0, 1] values -> RGB uint8 with matplotlib's perceptually uniform "inferno" colour map."""
    from matplotlib import colormaps

    return (colormaps["inferno"](np.clip(values, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def _panel(image: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(image).resize((size, size * image.shape[0] // image.shape[1]), Image.Resampling.BICUBIC)


def _labelled(panels: list[Image.Image], labels: list[str]) -> np.ndarray:
    width, height = panels[0].size
    out = Image.new("RGB", (width * len(panels), height + LABEL_PX), "black")
    draw = ImageDraw.Draw(out)
    for i, (panel, label) in enumerate(zip(panels, labels)):
        out.paste(panel, (i * width, 0))
        draw.text((i * width + 3, height + 2), label[: width // 6], fill="white")
    return np.asarray(out)


def overlay_strip(image: np.ndarray, maps: np.ndarray, words: list[str], panel: int = PANEL_PX) -> np.ndarray:
    """The image, then one panel per word with its heat map over the image, labelled: (H', W', 3) uint8.

    Args:
        image: (H, W, 3) uint8.
        maps: (words, H, W) in [0, 1].
        words: the label of each map.
        panel: width of each panel in pixels.
    """
    panels, labels = [_panel(image, panel)], ["image"]
    for word_map, word in zip(maps, words):
        blended = (1 - ALPHA) * image.astype(np.float32) + ALPHA * heat_colours(word_map.astype(np.float32))
        panels.append(_panel(blended.round().astype(np.uint8), panel))
        labels.append(word)
    return _labelled(panels, labels)
