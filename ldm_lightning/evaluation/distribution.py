"""Distances between generated and real images' features: FID (and FID∞), other Fréchet distances, KID, CMMD.

Fréchet distance and KID are torchmetrics' own (`FrechetInceptionDistance`, `KernelInceptionDistance`),
fed features that were extracted earlier and stored with each result row, so a resumed or multi-process
run reduces exactly the same numbers (on one process: `sync_on_compute=False`, the features already hold
every rank's rows). CMMD is written out here: no library of the stack implements it.
"""

import warnings
from typing import Literal

import numpy as np
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000  # Bińkowski et al. 2018; smaller sets use all their images in every subset
CMMD_SIGMA = 10.0  # Jayasumana et al. 2024: the Gaussian RBF kernel bandwidth on unit-norm CLIP embeddings
CMMD_SCALE = 1000.0  # their reported values are MMD² × 1000
COMPARABLE_N = 10_000  # the sample size of published COCO FIDs (e.g. SD v1.4's model card)


class _Given(torch.nn.Module):
    """Hands already-extracted features to a torchmetrics image metric (its `feature=` network)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _as_tensor(features: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(features), dtype=torch.float64)


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """‖μ_r − μ_f‖² + Tr(Σ_r + Σ_f − 2(Σ_r Σ_f)^½) of two feature sets (Heusel et al. 2017), float64."""
    metric = FrechetInceptionDistance(feature=_Given(real.shape[1]), sync_on_compute=False)
    metric.update(_as_tensor(real), real=True)
    metric.update(_as_tensor(fake), real=False)
    return float(metric.compute())


def frechet_infinity(real: np.ndarray, fake: np.ndarray, points: int = 15, seed: int = 0) -> float:
    """FID∞ (Chong & Forsyth 2020): FID extrapolated to an infinite generated sample, free of FID's 1/N bias.

    Fréchet distances of `points` random subsets of the generated set (N/5 to N images; one permutation
    per size from numpy's generator seeded with `seed`; the reference set stays whole) are fitted linearly
    in 1/N and read at 1/N = 0. Their paper fits 5,000 to 50,000 images; with few images it is a rough guide.
    """
    n = len(fake)
    sizes = np.unique(np.linspace(max(2, n // 5), n, points).astype(int))
    rng = np.random.default_rng(seed)
    values = [frechet_distance(real, fake[rng.permutation(n)[:size]]) for size in sizes]
    _, intercept = np.polyfit(1 / sizes, values, deg=1)
    return float(intercept)


def kernel_distance(real: np.ndarray, fake: np.ndarray, seed: int = 0) -> dict[str, float]:
    """KID (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel, mean and std over subsets.

    Subsets are drawn with a fixed seed, so the same features always give the same value.
    """
    size = min(KID_SUBSET_SIZE, len(real), len(fake))
    with warnings.catch_warnings():  # its note on keeping every feature in memory: that is what we pass it
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=_Given(real.shape[1]), subsets=KID_SUBSETS, subset_size=size, sync_on_compute=False
        )
    metric.update(_as_tensor(real), real=True)
    metric.update(_as_tensor(fake), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"kid_mean": float(mean), "kid_std": float(std), "kid_subsets": KID_SUBSETS, "kid_subset_size": size}


CmmdEstimator = Literal["biased", "unbiased"]
CMMD_ESTIMATORS: dict[str, str] = {
    "biased": "all pairs, i = j included (Gretton et al. 2012, eq. 5), as google-research/cmmd computes it",
    "unbiased": "pairs i != j within a set (Gretton et al. 2012, eq. 3)",
}


KERNEL_BLOCK = 1 << 21  # kernel entries computed at once (16 MB): the whole matrix is N² floats (7 GB at N = 30,000)


def _kernel_sums(a: torch.Tensor, b: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The sum of the Gaussian kernel exp(−γ‖a_i − b_j‖²) over all pairs, and over the pairs i = j (when `a` is
    `b`), a block of rows at a time."""
    total = torch.zeros((), dtype=torch.float64)
    diagonal = torch.zeros((), dtype=torch.float64)
    rows = max(1, KERNEL_BLOCK // len(b))
    for start in range(0, len(a), rows):
        k = torch.exp(-gamma * torch.cdist(a[start : start + rows], b).square())
        total += k.sum()
        if a is b:
            diagonal += k.diagonal(offset=start).sum()
    return total, diagonal


def cmmd(
    real: np.ndarray,
    fake: np.ndarray,
    sigma: float = CMMD_SIGMA,
    scale: float = CMMD_SCALE,
    estimator: CmmdEstimator = "biased",
) -> float:
    """CMMD (Jayasumana et al. 2024): scale · MMD² of L2-normalised CLIP embeddings, Gaussian RBF kernel.

    "biased" is the authors' estimator (google-research/cmmd `distance.py`: the minimum-variance one,
    every pair averaged, i = j included), and so the one behind published CMMD values; it is never
    negative. "unbiased" leaves the pairs i = j out of the within-set means: its expectation is the
    population MMD², but on small sets it can fall below 0. The two differ by O(1/N).
    """
    if estimator not in CMMD_ESTIMATORS:
        raise ValueError(f"CMMD estimator {estimator!r}: choose one of {', '.join(CMMD_ESTIMATORS)}")
    x = torch.nn.functional.normalize(_as_tensor(real), dim=1)
    y = torch.nn.functional.normalize(_as_tensor(fake), dim=1)
    gamma = 1 / (2 * sigma**2)

    def within(a: torch.Tensor) -> torch.Tensor:
        total, diagonal = _kernel_sums(a, a, gamma)
        if estimator == "biased":
            return total / len(a) ** 2
        n = len(a)
        return (total - diagonal) / (n * (n - 1))

    between = _kernel_sums(x, y, gamma)[0] / (len(x) * len(y))
    return float(scale * (within(x) + within(y) - 2 * between))
