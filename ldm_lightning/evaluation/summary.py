"""Summaries of per-sample scores: mean, spread, a bootstrap interval, and what was left out and why."""

from typing import Any

import numpy as np

CHUNK_ELEMENTS = 1 << 20  # indices drawn at once by `bootstrap_ci`: 8 MB


def bootstrap_ci(values: np.ndarray, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (Efron & Tibshirani 1993, ch. 13), seeded."""
    if len(values) < 2:
        return float("nan"), float("nan")
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    # A few resamples at a time: all of them at once would be a resamples × N index matrix (480 MB at 30,000 rows).
    chunk = max(1, CHUNK_ELEMENTS // len(values))
    means = np.concatenate(
        [
            values[rng.integers(0, len(values), size=(min(chunk, resamples - done), len(values)))].mean(axis=1)
            for done in range(0, resamples, chunk)
        ]
    )
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
    return describe_as(scores, metric)


def describe(values: np.ndarray) -> dict[str, Any]:
    """n, mean, sample standard deviation and 95% bootstrap interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    return {
        "n": int(len(values)),
        "mean": float(values.mean()) if len(values) else float("nan"),
        "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
        "ci95": list(bootstrap_ci(values)),
    }


def describe_as(values: np.ndarray, prefix: str) -> dict[str, Any]:
    """`describe` as summary keys: `<prefix>_mean`, `_std`, `_ci95` and `_n`."""
    stats = describe(values)
    return {f"{prefix}_{key}": stats[key] for key in ("mean", "std", "ci95", "n")}


def prompt_means(rows: list[dict[str, Any]], metric: str) -> np.ndarray:
    """Each prompt's mean `metric` over its scored images (rows grouped by `prompt_index`), in prompt order;
    a prompt none of whose images was scored is left out."""
    scores: dict[int, list[float]] = {}
    for r in rows:
        if r.get(metric) is not None:
            scores.setdefault(int(r["prompt_index"]), []).append(r[metric])
    return np.array([np.mean(scores[p]) for p in sorted(scores)], dtype=np.float64)


def summarize_per_prompt(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The metric averaged per prompt: mean, std and N over prompt means, and a bootstrap interval that
    resamples prompts.

    With several images per prompt (`data.images_per_prompt`) the images of one prompt share it, so they
    are not independent samples of the prompt set; the per-image interval is then too narrow for a claim
    about prompts, and this one is the interval to quote. Rows carry `prompt_index`.
    """
    return describe_as(prompt_means(rows, metric), f"{metric}_prompt")


def timing(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per image in steady state and in each process's first batch (warm-up, fast mode's compilation).

    Steady state is the median over images outside first batches; with a single batch per process
    there is none, and all images count.
    """
    first = np.array([bool(r.get("first_batch")) for r in rows], dtype=bool)
    out = {}
    for key, name in (("seconds", "seconds_per_image"), ("sampling_seconds", "sampling_seconds_per_image")):
        seconds = np.array([number_or_nan(r.get(key)) for r in rows], dtype=np.float64)
        steady = seconds[~first] if (~first).any() else seconds
        out[name] = float(np.median(steady)) if len(steady) else float("nan")
        if key == "seconds":
            out["seconds_per_image_first_batch"] = float(seconds[first].mean()) if first.any() else float("nan")
    # Sampling apart, what each image costs the metrics (scoring and feature extraction).
    out["scoring_seconds_per_image"] = out["seconds_per_image"] - out["sampling_seconds_per_image"]
    return out


def number_or_nan(value: Any) -> float:
    """A row's value as a float, None as NaN (a missing score, a column a row lacks)."""
    return float("nan") if value is None else float(value)
