"""The one list of what `test` can measure (`model.metrics`), and what each metric writes into a summary."""

from typing import Literal, get_args

MetricName = Literal[
    "clip_score", "pick_score", "hpsv2", "aesthetic", "geneval", "fid", "kid", "cmmd", "fd_dinov2", "fd_clip"
]
METRICS: tuple[str, ...] = get_args(MetricName)
# Per-image metrics: each is a column of results.jsonl (None for an image left out) and a mean in the summary.
# `geneval` is 1.0 when the image satisfies its prompt's GenEval metadata, else 0.0.
PER_IMAGE_METRICS: tuple[str, ...] = ("clip_score", "pick_score", "hpsv2", "aesthetic", "geneval")
# Distribution metrics (generated against real images) and the feature set each compares.
FEATURES_OF: dict[str, str] = {
    "fid": "inception",
    "kid": "inception",
    "cmmd": "clip",
    "fd_clip": "clip",
    "fd_dinov2": "dinov2",
}
# The summary keys each distribution metric produces, in the order tables show them.
SUMMARY_KEYS: dict[str, tuple[str, ...]] = {
    "fid": ("fid", "fid_infinity"),
    "kid": ("kid_mean", "kid_std"),
    "cmmd": ("cmmd",),
    "fd_dinov2": ("fd_dinov2",),
    "fd_clip": ("fd_clip",),
}
QUALITY_KEYS: tuple[str, ...] = tuple(key for keys in SUMMARY_KEYS.values() for key in keys)
