"""The attention check's scores, and the judge's shape mask it scores against."""

import numpy as np

from ldm_lightning.lab.attention_check import cells_of, peak_in_cell, peak_inside, threshold_iou, word_of
from ldm_lightning.shapes.data import Shape, render
from ldm_lightning.shapes.judge import judge, shape_mask


def test_peak_inside_and_iou_by_hand():
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True  # 4 pixels
    heat = np.zeros((4, 4))
    heat[1, 1], heat[1, 2], heat[3, 3] = 1.0, 0.5, 0.3
    assert peak_inside(heat, mask)
    # {heat >= 0.4} = {(1, 1), (1, 2)}: intersection 1, union 4 + 1 = 5.
    assert threshold_iou(heat, mask) == 1 / 5
    heat[3, 3] = 2.0
    assert not peak_inside(heat, mask)
    assert threshold_iou(np.zeros((4, 4)), np.zeros((4, 4), dtype=bool)) == 0.0


def test_peak_in_cell_by_hand():
    mask = np.zeros((8, 8), dtype=bool)
    mask[5, 6] = True  # one pixel, in the 4×4 block at rows 4–7, columns 4–7
    touched = cells_of(mask, 4)
    assert touched.tolist() == [[False, False], [False, True]]
    heat = np.zeros((8, 8))
    heat[4, 4] = 1.0  # same block as the shape, not on its pixel
    assert peak_in_cell(heat, touched, 4) and not peak_inside(heat, mask)
    heat[3, 7] = 2.0  # the block above
    assert not peak_in_cell(heat, touched, 4)


def test_word_of_names_the_caption_words():
    shape = Shape("star", "green", "large", "center")
    assert [word_of(shape, k) for k in ("shape", "colour", "size", "position")] == ["star", "green", "large", "center"]


def test_shape_mask_covers_the_drawn_square():
    shape = Shape("square", "red", "large", "left")
    image = np.asarray(render(shape))
    mask = shape_mask(image)
    # The drawn square (shapes.data: radius 13, half-extent 0.88 r) around the left centre (15, 32),
    # in pixel-corner coordinates, anti-aliased at its edges.
    ys, xs = np.mgrid[:64, :64] + 0.5
    half = 0.88 * 13
    truth = (np.abs(xs - 15) <= half) & (np.abs(ys - 32) <= half)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9
    assert judge(image).shape == "square"  # the refactored judge still judges
    assert not shape_mask(np.zeros((64, 64, 3), dtype=np.uint8)).any()
