"""Summaries of per-sample scores: mean, spread, a bootstrap interval, and what was left out and why."""

from typing import Any

import numpy as np


def bootstrap_ci(values: np.ndarray, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (Efron & Tibshirani 1993, ch. 13), seeded."""
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(resamples, len(values)), replace=True).mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean CLIPScore over healthy samples; NaN/inf latents and black images are counted, not averaged."""
    scores = np.array([r["clip_score"] for r in rows if r.get("clip_score") is not None], dtype=np.float64)
    low, high = bootstrap_ci(scores)
    return {
        "clip_score_mean": float(scores.mean()) if len(scores) else float("nan"),
        "clip_score_std": float(scores.std(ddof=1)) if len(scores) > 1 else float("nan"),
        "clip_score_ci95": [low, high],
        "n": int(len(scores)),
        "n_rows": len(rows),
        "n_excluded": sum(r.get("clip_score") is None for r in rows),
        "n_nonfinite": sum(not r.get("finite", True) for r in rows),
        "n_black": sum(bool(r.get("black")) for r in rows),
        "n_truncated": sum(bool(r.get("truncated")) for r in rows),
        **timing(rows),
        "peak_memory_mb": max((r["peak_memory_mb"] for r in rows), default=float("nan")),
    }


def summarize_scores(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Mean, std, bootstrap interval and N of one per-image metric over the rows that have it."""
    scores = np.array([r[metric] for r in rows if r.get(metric) is not None], dtype=np.float64)
    low, high = bootstrap_ci(scores)
    return {
        f"{metric}_mean": float(scores.mean()) if len(scores) else float("nan"),
        f"{metric}_std": float(scores.std(ddof=1)) if len(scores) > 1 else float("nan"),
        f"{metric}_ci95": [low, high],
        f"{metric}_n": int(len(scores)),
    }


def timing(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per image in steady state and in each process's first batch (warm-up, fast mode's compilation).

    Steady state is the median over images outside first batches; with a single batch per process
    there is none, and all images count.
    """
    seconds = np.array([r["seconds"] for r in rows], dtype=np.float64)
    first = np.array([bool(r.get("first_batch")) for r in rows], dtype=bool)
    steady = seconds[~first] if (~first).any() else seconds
    return {
        "seconds_per_image": float(np.median(steady)) if len(steady) else float("nan"),
        "seconds_per_image_first_batch": float(seconds[first].mean()) if first.any() else float("nan"),
    }
