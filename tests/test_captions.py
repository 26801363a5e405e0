"""Pictures that read on their own: the run's grid captions each image; compare labels each pair."""

import numpy as np
from PIL import Image

from ldm_lightning.run_folder.writer import caption_lines, save_grid


def test_caption_names_index_prompt_seed_and_scores():
    row = {"index": 7, "prompt": "a large blue square at the top", "seed": 42, "clip_score": 26.456, "geneval": 1.0}
    assert caption_lines(row, chars=40) == ["7. a large blue square at the top", "seed 42", "CLIP 26.46 · GenEval 1.00"]
    long = caption_lines({**row, "prompt": "word " * 60}, chars=20)
    assert long[2].endswith("…") and long[3] == "seed 42"  # three prompt lines at most


def test_grid_has_a_caption_strip_under_each_image(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * (i + 1), np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"index": i, "prompt": f"prompt {i}", "seed": int(rng.integers(100)), "image": f"{i}.png"})
    grid = np.asarray(save_grid(tmp_path, rows))
    cell = 160  # images narrower than 160 px are scaled up, nearest neighbour
    assert grid.shape[1] == 3 * cell
    image_part, strip = grid[:cell, :cell], grid[cell:, :cell]
    assert (image_part == 40).all()  # the first image, scaled
    assert strip.shape[0] == 4 + 11 * 2 and (strip < 128).any() and (strip == 255).any()  # dark text on white
    assert (np.asarray(Image.open(tmp_path / "grid.png")) == grid).all()
