"""Training items from the scene world: ``{"prompt", "pixel_values"}`` as ``data.ShapesDataset`` gives them.

The recipes switch worlds with ``world``: ``"shapes"`` (one shape on 64²) or ``"scenes"`` (one to four
shapes on ``scene.CANVAS_PX``², single shapes among them). Item ``i`` depends only on ``(seed, split, i)``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ldm_lightning.shapes.data import ShapesDataset, Split, to_tensor
from ldm_lightning.shapes.scene import render_scene, scene_at
from ldm_lightning.shapes.scene_caption import describe, varied

World = Literal["shapes", "scenes"]


class ScenesDataset(ShapesDataset):
    """``num_samples`` scenes of ``split`` with their captions and pixels (3×H×W in [-1, 1]).

    Args:
        num_samples: length of the data set (one epoch).
        split: ``"train"`` (seen colour–shape pairs), ``"held_out"`` or ``"all"``.
        seed: data seed.
        p_empty_caption: probability of an empty prompt, for classifier-free guidance.
        caption_style: ``"varied"`` (training: dropped, reordered, reworded attributes) or ``"full"``.
    """

    def __init__(
        self,
        num_samples: int,
        split: Split = "train",
        seed: int = 0,
        p_empty_caption: float = 0.0,
        caption_style: Literal["varied", "full"] = "varied",
    ) -> None:
        super().__init__(num_samples, split, seed, p_empty_caption, caption_style)
        if self.caption_style not in ("varied", "full"):
            raise ValueError(f"caption_style must be 'varied' or 'full', got {self.caption_style!r}")

    def __getitem__(self, index: int) -> dict[str, str | torch.Tensor]:
        scene = scene_at(index, self.split, self.seed)
        rng = np.random.default_rng([self.seed, 3, index])  # captions apart from the scene's own stream
        prompt = varied(scene.claim, rng) if self.caption_style == "varied" else describe(scene.claim)
        if rng.random() < self.p_empty_caption:
            prompt = ""
        return {"prompt": prompt, "pixel_values": to_tensor(render_scene(scene.objects))}
