"""Per-image results as torchmetrics state: each process adds its rows, `compute` gathers every row once.

A `test` summary needs every row, not a running mean: the median time per image, the bootstrap
interval of the mean, and the distribution metrics over all images' features. These metrics keep one
entry per image in "cat" states, which torchmetrics gathers across processes when `compute` is called
(once, at the end of the epoch), so processes that ran different numbers of batches still meet only
there. A row produced twice (a process with nothing left to do repeats one, and a resumed run restores
finished rows) counts once, by its index.
"""

from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ldm_lightning.evaluation.summary import number_or_nan

# The numbers each `test` row carries about its own image besides its scores; a missing score (a broken
# image) is NaN in the state and None in the rows.
FLAG_FIELDS = (
    "finite",
    "black",
    "truncated",
    "seconds",
    "sampling_seconds",
    "first_batch",
    "peak_memory_mb",
    "prompt_index",
)


def _first_by_index(index: torch.Tensor) -> np.ndarray:
    """Positions of the first occurrence of each index, in increasing index order."""
    index = index.cpu().numpy().astype(np.int64)
    _, first = np.unique(index, return_index=True)
    return first


class ResultRows(Metric):
    """Each image's scores and `FLAG_FIELDS`, by row index; `compute` returns them as dicts sorted by index."""

    full_state_update = False

    def __init__(self, scores: tuple[str, ...] = ("clip_score",), **kwargs: Any):
        """
        Args:
            scores: the per-image scores the rows carry (`names.PER_IMAGE_METRICS` asked for).
        """
        super().__init__(**kwargs)
        self.scores = tuple(scores)
        self.fields = (*self.scores, *FLAG_FIELDS)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("values", default=[], dist_reduce_fx="cat")  # flat: one dtype and rank for every process
        self.set_dtype(torch.float64)

    def update(self, rows: list[dict[str, Any]]) -> None:
        """Add rows that hold `index`, the scores and the `FLAG_FIELDS` (a missing or None score becomes NaN)."""
        if not rows:
            return
        values = [[number_or_nan(r.get(f)) for f in self.fields] for r in rows]
        self.index.append(torch.tensor([r["index"] for r in rows], dtype=torch.float64, device=self.device))
        self.values.append(torch.tensor(values, dtype=torch.float64, device=self.device).flatten())

    def compute(self) -> list[dict[str, Any]]:
        if _empty(self.index):
            return []
        index, values = dim_zero_cat(self.index), dim_zero_cat(self.values).reshape(-1, len(self.fields))
        keep = _first_by_index(index)
        rows = []
        for i in keep:
            row = {"index": int(index[i])}
            for field, value in zip(self.fields, values[i].tolist()):
                row[field] = value
            for score in self.scores:
                row[score] = None if np.isnan(row[score]) else row[score]
            for flag in ("finite", "black", "truncated", "first_batch"):
                row[flag] = bool(row[flag])
            if np.isnan(row["prompt_index"]):  # one image per prompt
                del row["prompt_index"]
            else:
                row["prompt_index"] = int(row["prompt_index"])
            rows.append(row)
        return rows


class FeatureRows(Metric):
    """Image features by row index, one cat state per feature set; `compute` returns `{name: (N, D) array}`
    sorted by index, with the indices under `"index"`."""

    full_state_update = False

    def __init__(self, names: list[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.names = list(names)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        for name in self.names:  # flat, as in `ResultRows`; reshaped by the number of rows
            self.add_state(f"features_{name}", default=[], dist_reduce_fx="cat")
        self.set_dtype(torch.float64)

    def update(self, index: list[int], features: dict[str, np.ndarray | torch.Tensor]) -> None:
        if not self.names or not len(index):
            return
        self.index.append(torch.tensor(list(index), dtype=torch.float64, device=self.device))
        for name in self.names:
            values = torch.as_tensor(np.asarray(features[name]), dtype=torch.float64, device=self.device)
            getattr(self, f"features_{name}").append(values.flatten())

    def compute(self) -> dict[str, np.ndarray]:
        if not self.names or _empty(self.index):
            return {}
        index = dim_zero_cat(self.index)
        keep = _first_by_index(index)
        out = {"index": index.cpu().numpy().astype(np.int64)[keep]}
        for name in self.names:
            values = dim_zero_cat(getattr(self, f"features_{name}")).reshape(len(index), -1)
            out[name] = values.cpu().numpy()[keep]
        return out


def _empty(state: list | torch.Tensor) -> bool:
    """A cat state holds nothing: a list before `update` (or a sync), a tensor after."""
    return len(state) == 0 if isinstance(state, list) else state.numel() == 0
