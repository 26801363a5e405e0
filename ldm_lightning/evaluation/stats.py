"""Statistics of per-sample scores: compare two paired ones, correct many p-values.

Pure functions over arrays; the bootstrap is the one in `summary.py`. Resampling the pairs of a
paired comparison is resampling their differences, so the paired interval is that bootstrap
applied to `b - a`.
"""

from typing import Any

import numpy as np
from scipy.stats import wilcoxon

from ldm_lightning.evaluation.summary import bootstrap_ci


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """B against A on the same samples: mean of `b - a`, its paired bootstrap interval, the Wilcoxon
    signed-rank p-value (two-sided, scipy's defaults) and how often B scores higher, equal, lower."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = b - a
    # With no pair differing there is no evidence either way; scipy would divide 0 by 0 for it.
    p = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    return {
        "n": int(len(diff)),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "ci95_a": list(bootstrap_ci(a)),
        "ci95_b": list(bootstrap_ci(b)),
        "mean_diff": float(diff.mean()),
        "ci95_diff": list(bootstrap_ci(diff)),
        "p_wilcoxon": p,
        "wins": int((diff > 0).sum()),
        "ties": int((diff == 0).sum()),
        "losses": int((diff < 0).sum()),
    }


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979, "A simple sequentially rejective multiple test
    procedure"): the i-th smallest of m is multiplied by m - i + 1, kept monotone, capped at 1. NaN stays NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    finite = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(len(p), np.nan)
    running = 0.0
    for rank, i in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (len(finite) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
