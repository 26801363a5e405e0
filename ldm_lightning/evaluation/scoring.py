"""The metrics of one `test` run together: resolved from `model.metrics`, loaded once, applied to each batch,
summarized at the end. The module orchestrates; this file knows what each kind of metric needs."""

from typing import Any

import numpy as np
import torch

from ldm_lightning.errors import UserError
from ldm_lightning.evaluation.metrics import BUILT_IN, ClipScore, ImageMetric, Networks, SetMetric


def resolve_metrics(metrics: list | None) -> list[ImageMetric | SetMetric]:
    """`model.metrics` as metric objects: CLIPScore always, first; the metrics given as objects (class path and init
    args), in order; then the built-ins given by name, as default instances, unless an object of the same name is
    given too (`--model.metrics '[clip_score, fid, kid]' --model.metrics+=FID --model.metrics.inception_weights F`
    configures the FID, whose Inception then serves KID too)."""
    given = [m for m in metrics or [] if not isinstance(m, str)]
    for metric in given:
        if not isinstance(metric, (ImageMetric, SetMetric)):
            raise UserError(
                f"model.metrics: {type(metric).__name__} is neither an ImageMetric nor a SetMetric "
                "(ldm_lightning.evaluation.metrics); subclass one of them"
            )
    names = [m.name for m in given]
    for name in metrics or []:
        if not isinstance(name, str) or name in names:
            continue
        if name not in BUILT_IN:
            raise UserError(
                f"model.metrics: unknown {name!r}; choose from {', '.join(BUILT_IN)}, or give a class path "
                "(--model.metrics+=your_module.YourMetric)"
            )
        given.append(BUILT_IN[name]())
        names.append(name)
    if not any(isinstance(m, ClipScore) for m in given):
        given.insert(0, ClipScore())
    given.sort(key=lambda m: not isinstance(m, ClipScore))
    names = [m.name for m in given]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated or not all(names):
        raise UserError(f"model.metrics: each metric needs its own non-empty name; repeated: {repeated or ['']}")
    return given


class Scoring:
    """Per-image scores and per-image features of each `test` batch, and the set metrics at the end.

    Networks load in `load` (the module's `setup`), so that a weight that cannot be found fails before
    any image is sampled. They are kept out of the module's submodules: Lightning's precision casts never
    reach them (fp32 throughout).
    """

    def __init__(self, metrics: list[ImageMetric | SetMetric], default_clip: str) -> None:
        """Args:
        metrics: from `resolve_metrics`.
        default_clip: the CLIP that scores images unless a metric names another.
        """
        self.image_metrics = [m for m in metrics if isinstance(m, ImageMetric)]
        self.set_metrics = [m for m in metrics if isinstance(m, SetMetric)]
        self.networks = Networks(self.image_metrics[0].model or default_clip)  # ClipScore's CLIP scores by default
        self.extractors: dict[str, torch.nn.Module] = {}
        self.builders: dict[str, SetMetric] = {}  # the metric whose extractor each feature set uses
        self.loaded = False

    @property
    def names(self) -> tuple[str, ...]:
        """The per-image columns, CLIPScore first."""
        return tuple(m.name for m in self.image_metrics)

    @property
    def feature_names(self) -> list[str]:
        """The feature sets the set metrics compare (none by default)."""
        return list(dict.fromkeys(m.features for m in self.set_metrics))

    @property
    def clip_name(self) -> str:
        return self.image_metrics[0].model or self.networks.default_clip

    def load(self) -> None:
        """Load every metric's networks (once)."""
        if self.loaded:
            return
        for metric in self.image_metrics:
            metric.load(self.networks)
        for metric in self.set_metrics:
            if metric.features not in self.extractors:
                self.extractors[metric.features] = metric.extractor(self.networks).eval().requires_grad_(False)
                self.builders[metric.features] = metric
        self.loaded = True

    def prepare(self, datamodule) -> None:
        """`test`'s setup: load the networks, and let the metrics check every prompt row (GenEval's metadata) and
        the set metrics their real images, before any sampling."""
        from ldm_lightning.evaluation.reference import check_reference
        from ldm_lightning.interfaces import PromptSource

        self.load()
        if isinstance(datamodule, PromptSource):
            self.check_rows(datamodule.load_rows())
        if self.set_metrics:
            check_reference(datamodule, self)

    def to(self, device: torch.device) -> None:
        for metric in self.image_metrics:
            metric.to(device)
        for module in [*self.networks.modules(), *self.extractors.values()]:
            module.to(device)

    def check_rows(self, rows: list[dict[str, Any]]) -> None:
        """Let metrics that need something of every prompt row (GenEval's metadata) check it before sampling."""
        for metric in self.image_metrics:
            metric.check_rows(rows)

    def score(
        self, pixels: torch.Tensor, prompts: list[str], rows: list[dict[str, Any]], healthy: list[bool]
    ) -> dict[str, list]:
        """Every per-image column of a batch: each metric's values and its extra columns; a broken image (black or
        non-finite) gets the metric's `for_broken_image` columns instead (None by default)."""
        columns: dict[str, list] = {}
        with torch.no_grad():
            for metric in self.image_metrics:
                values = list(metric.score(pixels, prompts, rows))
                if len(values) != len(rows):
                    raise RuntimeError(f"metric {metric.name} gave {len(values)} values for {len(rows)} images")
                found = {metric.name: [None if v is None else float(v) for v in values], **metric.extra_columns()}
                broken = metric.for_broken_image()
                for name, column in found.items():
                    columns[name] = [v if ok or name not in broken else broken[name] for v, ok in zip(column, healthy)]
        return columns

    def score_rows(self, rows: list[dict[str, Any]], pixels: torch.Tensor, prompts: list[dict[str, Any]]) -> dict:
        """Score a sampled batch's image rows in place (each per-image column; `features` per row for a run folder's
        resume; `prompt_index` with several images per prompt) and return the batch's features per feature set."""
        from ldm_lightning.generation.image_rows import healthy

        texts = [p["prompt"] for p in prompts]
        columns = self.score(pixels, texts, prompts, [healthy(r) for r in rows])
        features = self.features(pixels)
        for i, (row, prompt) in enumerate(zip(rows, prompts)):
            row.update({name: values[i] for name, values in columns.items()})
            if features:
                row["features"] = {name: values[i] for name, values in features.items()}
            if prompt.get("prompt_index") is not None:
                row["prompt_index"] = int(prompt["prompt_index"])
        return features

    def features(self, pixels: torch.Tensor) -> dict[str, np.ndarray]:
        """Each feature set's per-image features of a batch."""
        from ldm_lightning.evaluation.features import extract

        return {name: values.numpy() for name, values in extract(self.extractors, pixels).items()}

    def reference(self, files: list, cache_dir, device) -> tuple[dict[str, np.ndarray], list[str]]:
        """The reference images' features for each feature set (cached), and the unreadable files skipped."""
        from ldm_lightning.evaluation.real_images import reference_features

        identities = {name: metric.identity() for name, metric in self.builders.items()}
        return reference_features(files, self.extractors, cache_dir, device, identities)

    def summarize_sets(self, generated: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, Any]:
        """Every set metric's values."""
        out: dict[str, Any] = {}
        for metric in self.set_metrics:
            out.update(metric.compute(generated[metric.features], reference[metric.features]))
        return out

    def summarize(self, rows, source, generated, reference: dict[str, Any]) -> dict[str, Any]:
        """The run's summary from every process's rows, on rank 0: CLIPScore's (`summary.summarize`), each
        per-image metric's mean and interval, per prompt with several images per prompt, GenEval's tasks, the set
        metrics, the groups, and which metrics it holds.

        Args:
            rows: every scored row, by index (`ResultRows.gathered`).
            source: the `PromptSource` (prompt columns for groups), or None.
            generated: the generated images' features (`FeatureRows.gathered`), or None without set metrics.
            reference: `reference.load_reference`'s result.
        """
        from ldm_lightning.evaluation.groups import group_summary
        from ldm_lightning.evaluation.summary import summarize, summarize_per_prompt, summarize_scores

        summary = summarize(rows)
        for name in self.names[1:]:
            summary.update(summarize_scores(rows, name))
        columns = {r["index"]: r for r in source.rows} if source is not None else {}
        with_prompts = [{**columns.get(r["index"], {}), **r} for r in rows]
        if any("prompt_index" in r for r in with_prompts):  # several images per prompt: also average per prompt
            summary["n_prompts"] = len({r["prompt_index"] for r in with_prompts})
            for name in self.names:
                summary.update(summarize_per_prompt(with_prompts, name))
        if "geneval" in self.names:
            from ldm_lightning.evaluation.geneval import summarize_geneval

            summary.update(summarize_geneval(with_prompts))
        if self.set_metrics:
            summary.update(self._set_summary(generated, reference))
        if source is not None and source.group_by:
            summary["groups"] = group_summary(with_prompts, source.group_by, self.names)
        summary["per_image_metrics"] = list(self.names)
        summary["set_metric_keys"] = list(self.logged_keys())
        summary["metrics"] = self.describe()
        return summary

    def _set_summary(self, generated: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
        from lightning.pytorch.utilities import rank_zero_info

        from ldm_lightning.evaluation.distribution import COMPARABLE_N

        n_generated = len(generated["index"])
        n_reference = len(next(iter(reference["features"].values())))
        if min(n_generated, n_reference) < COMPARABLE_N:
            rank_zero_info(
                f"note: set metrics from {n_generated} generated and {n_reference} reference images: values below "
                f"{COMPARABLE_N:,} images are biased upwards and not comparable with published ones"
            )
        return {
            **self.summarize_sets(generated, reference["features"]),
            "n_generated": n_generated,
            "n_reference": n_reference,
            "n_reference_skipped": len(reference["skipped"]),
            "reference": reference["spec"],
            "extractors": {name: metric.identity() for name, metric in self.builders.items()},
            "resize": {name: metric.preprocessing() for name, metric in self.builders.items()},
        }

    def logged_keys(self) -> tuple[str, ...]:
        """The summary keys logged as `test/<key>` besides the per-image means."""
        return tuple(key for metric in self.set_metrics for key in metric.logged())

    def describe(self) -> list[str]:
        """Each metric as its class and settings, for the summary and the TensorBoard HParams."""
        out = []
        for metric in [*self.image_metrics, *self.set_metrics]:
            settings = {k: v for k, v in vars(metric).items() if not k.startswith("_") and k != "features"}
            args = ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None)
            out.append(f"{type(metric).__name__}({args})")
        return out
