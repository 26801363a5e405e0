"""A finished `test` run in TensorBoard, written so that runs logged side by side compare without changing a setting.

- SCALARS `test/<metric>`: the run's value (CLIPScore mean, each distribution metric, each per-image mean) as a
  flat line over the rows it summarises (steps 0 and n − 1). A single point per run would not survive
  TensorBoard's default "ignore outliers in chart scaling", which fits the y axis to the 5th–95th percentile
  of all points: with four single-point runs the lowest and the highest leave the chart and its hover list.
  With two points per run every run stays on the axis up to ten runs.
- HISTOGRAMS `test/<metric>_per_row`: each run's per-row scores.
- HPARAMS: one session per run (its settings, prompt set, rows and seed) and no experiment summary. TensorBoard
  keeps a single experiment summary per log folder (the first it finds), so one run's list of metrics would hide
  the others' (FD-CLIP of one run, CMMD of another). Without one, TensorBoard builds the experiment from all runs:
  every setting any run has, those that differ between the runs first, and every scalar tag as a metric, sorted by
  name. Its table shows the first five of each. The names below sort so that, after the settings that differ, come
  `guidance_scale`, `precision`, `prompts`, `rows`, `sampler` (then `seed`, `size`, `weights`, `test_*`), and the
  metrics `test/clip_score` and the distribution metrics before the timings.
"""

from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger


def run_scores(summary: dict[str, Any]) -> dict[str, float]:
    """The values that rank runs, as `test/<name>`: CLIPScore's mean, each set metric's values, each other per-image
    metric's mean, GenEval's overall score. No spread or counts: they would take the HParams table's metric columns.
    The one mapping from a summary to `trainer.test`'s keys: the module logs these, TensorBoard draws them."""
    scores = {"test/clip_score": summary["clip_score_mean"]}
    scores.update({f"test/{key}": summary[key] for key in summary.get("set_metric_keys", []) if key in summary})
    per_image = summary.get("per_image_metrics", ["clip_score"])[1:]
    scores.update({f"test/{m}": summary[f"{m}_mean"] for m in per_image if f"{m}_mean" in summary})
    if "geneval_overall" in summary:
        scores["test/geneval_overall"] = summary["geneval_overall"]
    return {name: float(value) for name, value in scores.items()}


def logged_scores(summary: dict[str, Any]) -> dict[str, float]:
    """What `trainer.test` returns: `run_scores` and CLIPScore's spread, interval and N."""
    return {
        **run_scores(summary),
        "test/clip_score_std": summary["clip_score_std"],
        "test/clip_score_ci95_low": summary["clip_score_ci95"][0],
        "test/clip_score_ci95_high": summary["clip_score_ci95"][1],
        "test/n": float(summary["n"]),
    }


def prompt_set(prompts: str | list[str] | None) -> str:
    """The prompts' name as the table's narrow column can show it: a file's or folder's name ("shapes-48.txt"), a hub
    dataset's id, "inline list" or "example prompts"."""
    if prompts is None:
        return "example prompts"
    if isinstance(prompts, (list, tuple)):
        return "inline list"
    return Path(prompts).name if Path(prompts).exists() else str(prompts)


def board_hparams(settings: dict[str, Any], data: dict[str, Any], n_rows: int) -> dict[str, bool | int | float | str]:
    """A run's HParams entry: `run_settings` folded into a few columns whose names sort the way the table should read.

    Args:
        settings: `LatentDiffusionModule.run_settings(precision, "test")`.
        data: the data module's hyperparameters (`prompts`, `seed`, `reference`).
        n_rows: the rows the run scored.
    """
    rest = {k: v for k, v in settings.items() if v is not None}
    for key in ("format", "weights", "lora_weights", "scheduler_config", "decode_fp32", "metrics"):
        rest.pop(key, None)  # stamps and details: the columns below name the run
    guidance = rest.pop("guidance", "ClassifierFreeGuidance")
    weights = str(rest.pop("model"))
    if "revision" in rest:
        weights += f"@{rest.pop('revision')}"
    if "variant" in rest:
        weights += f" ({rest.pop('variant')})"
    if "prediction_type" in rest:
        weights += f", {rest.pop('prediction_type')}"
    if "lora" in rest:
        weights += f" + LoRA {rest.pop('lora')} (scale {rest.pop('lora_scale', 1.0):g})"
    sampler = f"{rest.pop('scheduler')}, {rest.pop('num_inference_steps')} steps"
    eta = rest.pop("eta", 0.0)
    if sampler.startswith("ddim,") and eta:  # only DDIM reads eta
        sampler += f", eta {eta:g}"
    if rest.pop("fast", False):
        sampler += ", fast"
    rest.pop("inspect", None)  # more files, the same images
    hparams: dict[str, bool | int | float | str] = {
        "guidance_scale": float(rest.pop("guidance_scale", float("nan"))),
        "precision": str(rest.pop("precision")),
        "prompts": prompt_set(data.get("prompts")),
        "rows": n_rows,
        "sampler": sampler,
        "seed": int(data.get("seed", 0)),
        "size": f"{rest.pop('width')}x{rest.pop('height')}",
        # After "size" by name: shown by default only where runs differ in them (ASCII only: TensorBoard's filter pane
        # shows other characters as escapes).
        "weights": weights,
        "test_clip": str(rest.pop("clip_model")),
    }
    if guidance != "ClassifierFreeGuidance":
        hparams["guidance"] = guidance
    for key in [k for k in rest if k.startswith("guidance_")]:
        value = rest.pop(key)
        if (guidance, key, value) not in DEFAULT_GUIDANCE:
            hparams[key] = value if isinstance(value, (bool, int, float)) else str(value)
    if data.get("reference"):
        hparams["test_reference"] = str(data["reference"])
    for key, value in rest.items():  # scorer settings and any later setting
        hparams[key if key.startswith("test_") else f"test_{key}"] = (
            value if isinstance(value, (bool, int, float)) else str(value)
        )
    return hparams


# Guidance settings at their defaults are left out of the table.
DEFAULT_GUIDANCE = {
    ("ClassifierFreeGuidance", "guidance_rescale", 0.0),
    ("ClassifierFreeGuidance", "guidance_start", 0.0),
    ("ClassifierFreeGuidance", "guidance_stop", 1.0),
}


def log_test_run(
    trainer, summary: dict[str, Any], rows: list[dict[str, Any]], settings: dict[str, Any], source, logged
):
    """A finished `test` run to the Trainer's loggers: TensorBoard gets the scoreboard (scores, per-row histograms,
    an HParams entry, on rank 0); other loggers get the settings as hyperparameters.

    Args:
        trainer: the Trainer.
        summary: the run's summary.
        rows: every scored row.
        settings: `LatentDiffusionModule.run_settings(precision, "test")`.
        source: the `PromptSource` (its hyperparameters name the prompt set), or None.
        logged: the values the module logged with `self.log` (left out of `ScoreboardLogger`'s single points).
    """
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            if trainer.is_global_zero:
                data = dict(source.hparams) if source is not None else {}
                hparams = board_hparams(settings, data, len(rows))
                write_scoreboard(logger.experiment, summary, rows, hparams, tuple(summary["per_image_metrics"]))
            if isinstance(logger, ScoreboardLogger):
                logger.on_board.update(logged)
        else:
            logger.log_hyperparams({k: "none" if v is None else v for k, v in settings.items()})


def log_validation_images(loggers, pixels, step: int) -> None:
    """Validation's images (uint8 (N, 3, H, W)) as one grid in TensorBoard (`val/images`)."""
    from diffusers.utils import make_image_grid
    from PIL import Image

    images = [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]
    columns = min(8, len(images))
    rows = -(-len(images) // columns)
    images += [Image.new("RGB", images[0].size)] * (rows * columns - len(images))
    grid = np.asarray(make_image_grid(images, rows=rows, cols=columns))
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image("val/images", grid, step, dataformats="HWC")


def write_scoreboard(
    writer, summary: dict[str, Any], rows: list[dict[str, Any]], hparams: dict[str, Any], metrics: tuple[str, ...]
) -> None:
    """Scalars, per-row histograms and the HParams session of a finished `test` run.

    Args:
        writer: a `torch.utils.tensorboard.SummaryWriter` (a `TensorBoardLogger`'s `experiment`).
        summary: the run's summary (`summarize` and the metrics' additions).
        rows: every scored row (with `clip_score` and the other per-image metrics).
        hparams: `board_hparams(...)`.
        metrics: the per-image metrics the rows carry.
    """
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    last = max(len(rows) - 1, 1)
    for name, value in run_scores(summary).items():
        for step in (0, last):
            writer.add_scalar(name, value, step)
    for metric in metrics:
        values = np.array([r[metric] for r in rows if isinstance(r.get(metric), (int, float))], dtype=np.float64)
        if len(values):
            # numpy's bins: TensorBoard's default buckets grow by 10% of the value, about 7 points wide around 70
            writer.add_histogram(f"test/{metric}_per_row", values, 0, bins="auto")
    # The session's start and end, as Lightning's `TensorBoardLogger.log_hyperparams` writes them, but not the
    # experiment summary (see the module's docstring). No group name: TensorBoard names each row of its table by run.
    _, start, end = hparams_summaries(hparams, {})
    for part in (start, end):
        writer._get_file_writer().add_summary(part)
    writer.flush()


class ScoreboardLogger(TensorBoardLogger):
    """Lightning's `TensorBoardLogger` for runs compared side by side; the command line's `predict` and `test` use it.

    `LatentDiffusionModule` writes a finished `test` run's values itself (`write_scoreboard`) and also logs them with
    `self.log`, so that `trainer.test` returns them; Lightning then hands them to every logger as single points, with
    an `epoch` series that is always 0. This logger leaves out the values the module names in `on_board` (and that
    `epoch` with them). It writes no `hp_metric` by default: that experiment summary, written at the start of every
    run, is the one TensorBoard would show for all runs.

    Args:
        *args: as `TensorBoardLogger` (`save_dir`, `name`, `version`, …).
        default_hp_metric: as `TensorBoardLogger`, off by default.
        **kwargs: as `TensorBoardLogger`.
    """

    def __init__(self, *args: Any, default_hp_metric: bool = False, **kwargs: Any):
        super().__init__(*args, default_hp_metric=default_hp_metric, **kwargs)
        self.on_board: set[str] = set()

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        kept = {name: value for name, value in metrics.items() if name not in self.on_board}
        if set(kept) - {"epoch"}:
            super().log_metrics(kept, step)
