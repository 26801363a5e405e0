"""Per-image results as torchmetrics state: each process adds its rows, `gathered` collects every row once, on rank 0.

A `test` summary needs every row, not a running mean: the median time per image, the bootstrap
interval of the mean, and the distribution metrics over all images' features. These metrics keep one
entry per image in "cat" states (torchmetrics resets them and moves them with the module). They are
gathered once, at the end of the epoch, so processes that ran different numbers of batches still meet only
there, and only to rank 0, which summarizes: the other ranks never hold every row (at 30,000 rows and
2,048-dimensional features that would be half a gigabyte on each). A row produced twice (a process with nothing
left to do repeats one, and a resumed run restores finished rows) counts once, by its index.
"""

from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ldm_lightning.evaluation.summary import number_or_nan


def gather_to_zero(obj: Any) -> list[Any] | None:
    """Every process's `obj`, in rank order, on rank 0; None on the other ranks. One process: `[obj]`."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, parts, dst=0)
    return parts


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


def _first_by_index(index: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each index, in increasing index order."""
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
        super().__init__(sync_on_compute=False, **kwargs)  # gathered by `gathered`, to rank 0 only
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

    def local(self) -> tuple[np.ndarray, np.ndarray]:
        """This process's rows: indices (N,) and values (N, fields)."""
        if _empty(self.index):
            return np.zeros(0, dtype=np.int64), np.zeros((0, len(self.fields)))
        index, values = dim_zero_cat(self.index), dim_zero_cat(self.values).reshape(-1, len(self.fields))
        return index.cpu().numpy().astype(np.int64), values.cpu().numpy()

    def compute(self) -> list[dict[str, Any]]:
        """This process's rows as dicts, sorted by index."""
        return self._rows([self.local()])

    def gathered(self) -> list[dict[str, Any]] | None:
        """Every process's rows as dicts, sorted by index, on rank 0; None on the other ranks."""
        parts = gather_to_zero(self.local())
        return None if parts is None else self._rows(parts)

    def _rows(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
        index = np.concatenate([p[0] for p in parts])
        values = np.concatenate([p[1] for p in parts]).reshape(-1, len(self.fields))
        rows = []
        for i in _first_by_index(index):
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
    """Image features by row index, one cat state per feature set (float32, as the extractors give them);
    `gathered` returns `{name: (N, D) array}` sorted by index on rank 0, with the indices under `"index"`."""

    full_state_update = False

    def __init__(self, names: list[str], **kwargs: Any):
        super().__init__(sync_on_compute=False, **kwargs)  # gathered by `gathered`, to rank 0 only
        self.names = list(names)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        for name in self.names:  # flat, as in `ResultRows`; reshaped by the number of rows
            self.add_state(f"features_{name}", default=[], dist_reduce_fx="cat")

    def update(self, index: list[int], features: dict[str, np.ndarray | torch.Tensor]) -> None:
        if not self.names or not len(index):
            return
        self.index.append(torch.tensor(list(index), dtype=torch.int64, device=self.device))
        for name in self.names:
            values = torch.as_tensor(np.asarray(features[name]), dtype=torch.float32, device=self.device)
            getattr(self, f"features_{name}").append(values.flatten())

    def local(self) -> dict[str, np.ndarray]:
        """This process's features, `{"index": (N,), name: (N, D)}`, in the order they were added."""
        if not self.names or _empty(self.index):
            return {}
        index = dim_zero_cat(self.index).cpu().numpy()
        out = {"index": index}
        for name in self.names:
            out[name] = dim_zero_cat(getattr(self, f"features_{name}")).reshape(len(index), -1).cpu().numpy()
        return out

    def compute(self) -> dict[str, np.ndarray]:
        """This process's features, sorted by index."""
        return self._sorted([self.local()])

    def gathered(self) -> dict[str, np.ndarray] | None:
        """Every process's features, sorted by index, on rank 0; None on the other ranks."""
        parts = gather_to_zero(self.local())
        return None if parts is None else self._sorted(parts)

    def _sorted(self, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        parts = [p for p in parts if p]
        if not parts:
            return {}
        index = np.concatenate([p["index"] for p in parts])
        keep = _first_by_index(index)
        out = {"index": index[keep].astype(np.int64)}
        for name in self.names:
            out[name] = np.concatenate([p[name] for p in parts])[keep]
        return out


def _empty(state: list | torch.Tensor) -> bool:
    """A cat state holds nothing: a list before `update` (or a sync), a tensor after."""
    return len(state) == 0 if isinstance(state, list) else state.numel() == 0
