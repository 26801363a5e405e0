"""A Lightning callback that saves every generated image as a PNG with one manifest row, on every rank."""

import json
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np
from diffusers.utils import make_image_grid
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from PIL import Image

from ldm_lightning.data import ROW_KEYS
from ldm_lightning.errors import UserError
from ldm_lightning.evaluation.summary import summarize
from ldm_lightning.run_folder.files import (
    MANIFEST,
    RUN_FILE,
    append_jsonl,
    atomic_write,
    finished_rows,
    image_name,
    load_features,
    png_bytes,
    read_jsonl,
    rewrite_sorted,
    save_features,
)

GRID = "grid.png"
RESULTS = "results.jsonl"
SUMMARY = "summary.json"
GROUPS = "groups.md"
MAX_GRID_IMAGES = 64
# Distribution metrics a summary may hold (those requested with model.metrics), logged beside clip_score.
QUALITY_KEYS = ("fid", "fid_infinity", "kid_mean", "kid_std", "cmmd", "fd_dinov2", "fd_clip")


class ImageWriter(BasePredictionWriter):
    """Writes `run_dir/<index>-<prompt>.png` and a `manifest.jsonl` row per image, atomically.

    At start it records the run (`run.json`) and tells the data module which rows are already
    finished, so a killed run started again only does the rest.
    """

    def __init__(self, run_dir: str | Path, settings: dict[str, Any], run_fingerprint: str):
        super().__init__(write_interval="batch")
        self.run_dir = Path(run_dir)
        self.settings = settings
        self.fingerprint = run_fingerprint
        self.manifest = self.run_dir / MANIFEST
        self.started = 0.0
        self.columns: dict[int, dict[str, Any]] = {}  # a prompt table's other columns, by row index

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if trainer.is_global_zero:
            if not (self.run_dir / RUN_FILE).exists():
                run = {"fingerprint": self.fingerprint, "stage": stage, "settings": self.settings}
                atomic_write(self.run_dir / RUN_FILE, json.dumps(run, indent=2).encode())
            # A run stopped by a full disk or a kill may have left a torn last line, which a new row
            # appended after it would join; keep only whole rows before anything is appended.
            for name in (MANIFEST, RESULTS):
                if (self.run_dir / name).is_file():
                    rewrite_sorted(self.run_dir / name, {i: r for i, r in enumerate(read_jsonl(self.run_dir / name))})
        check_shared_folder(trainer, self.run_dir)
        done = finished_rows(self.run_dir, read_jsonl(self.done_file(stage)))
        datamodule = trainer.datamodule
        datamodule.skip = set(done)
        self.columns = {r["index"]: {k: v for k, v in r.items() if k not in ROW_KEYS} for r in datamodule.rows}
        total = len(datamodule.rows)
        if done and len(done) >= total:
            summary = self.run_dir / SUMMARY if stage == "test" else self.manifest
            rank_zero_info(f"Nothing left to do: all {total} samples are finished in {self.run_dir} (see {summary}).")
            if stage == "test":  # Lightning skips an empty test loop and its hooks; groups may be new
                self.summarize_groups(trainer)
        elif done:
            rank_zero_info(f"Resuming {self.run_dir}: {len(done)} of {total} images already done.")
        self.started = time.perf_counter()

    def done_file(self, stage: str) -> Path:
        """The file whose rows mark a sample finished: the manifest, or the scores when testing."""
        return self.run_dir / (RESULTS if stage == "test" else MANIFEST)

    def manifest_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """The JSON row of one image: prompt row, file name, settings and health flags."""
        name = image_name(row["index"], row["prompt"])
        kept = {k: v for k, v in row.items() if k not in ("pixels", "features")}
        return {**self.columns.get(row["index"], {}), **kept, "image": name, **self.settings}

    def write_rows(self, rows: list[dict[str, Any]], extra_file: Path | None = None) -> None:
        """Save each row's image, then its manifest row (the image is on disk before its row)."""
        for row in rows:
            out = self.manifest_row(row)
            atomic_write(self.run_dir / out["image"], png_bytes(row["pixels"]))
            append_jsonl(self.manifest, out)
            if extra_file is not None:
                append_jsonl(extra_file, out)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.write_rows(prediction)
        drop_pixels(prediction)
        self.stop_if_preempted(trainer)

    def stop_if_preempted(self, trainer: Trainer) -> None:
        """After a SIGTERM (how SLURM and Kubernetes preempt), stop once the batch in flight is written.

        Lightning's signal connector records the signal (`trainer.received_sigterm`) and stops `fit`
        and `test` between batches, but not `predict`; stopping here covers both, with the reason.
        """
        if trainer.received_sigterm:
            done = len(finished_rows(self.run_dir, read_jsonl(self.manifest), decode=False))
            raise SIGTERMException(f"SIGTERM received; {done} finished images are kept in {self.run_dir}")

    def finish(self, trainer: Trainer) -> dict[int, dict[str, Any]]:
        """After all ranks: sort the manifest, draw the grid; returns the finished rows by index."""
        trainer.strategy.barrier("ldm_lightning.run_folder.writer.finish")
        done = finished_rows(self.run_dir, read_jsonl(self.manifest), decode=False)  # decoded at setup or written whole
        if trainer.is_global_zero and done:
            rewrite_sorted(self.manifest, done)
            grid = save_grid(self.run_dir, [done[i] for i in sorted(done)][:MAX_GRID_IMAGES])
            log_grid(trainer, grid, [done[i]["prompt"] for i in sorted(done)][:MAX_GRID_IMAGES])
            seconds = time.perf_counter() - self.started
            images = f"{len(done)} image" + "s" * (len(done) != 1)
            rank_zero_info(f"{images} in {self.run_dir} (grid: {self.run_dir / GRID}), {seconds:.1f} s")
        return done

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.finish(trainer)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        save_features(self.run_dir, trainer.global_rank, outputs)  # before the rows that mark them finished
        self.write_rows(outputs, extra_file=self.run_dir / RESULTS)
        if trainer.is_global_zero:
            log_batch(trainer, outputs, batch_idx)
        drop_pixels(outputs)
        self.stop_if_preempted(trainer)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every rank's rows are on disk after the barrier: reduce once, from the file, which also
        # holds the rows of an earlier, interrupted run of the same settings.
        trainer.strategy.barrier("ldm_lightning.run_folder.writer.summary")
        summary = None
        if trainer.is_global_zero:
            rows = finished_rows(self.run_dir, read_jsonl(self.run_dir / RESULTS), decode=False)
            rewrite_sorted(self.run_dir / RESULTS, rows)
            summary = summarize(list(rows.values()))
            if getattr(pl_module, "feature_names", None):
                summary.update(pl_module.distribution_summary(load_features(self.run_dir, sorted(rows))))
            summary["settings"] = self.settings
            atomic_write(self.run_dir / SUMMARY, json.dumps(summary, indent=2).encode())
        summary = trainer.strategy.broadcast(summary, src=0)
        # The same value on every rank (broadcast above); the mean reduction is a no-op that keeps Lightning quiet.
        pl_module.log("clip_score", summary["clip_score_mean"], sync_dist=True)
        quality = {key: summary[key] for key in QUALITY_KEYS if key in summary}
        for key, value in quality.items():
            pl_module.log(key, value, sync_dist=True)
        hp_metrics = {"hp/clip_score": summary["clip_score_mean"], **{f"hp/{k}": v for k, v in quality.items()}}
        for logger in trainer.loggers:
            logger.log_hyperparams(flat_settings(self.settings), metrics=hp_metrics)
        if summary["n_truncated"]:
            rank_zero_info(f"{summary['n_truncated']} prompts were longer than the tokenizer limit and were truncated.")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.finish(trainer)
        self.summarize_groups(trainer)

    def summarize_groups(self, trainer: Trainer) -> None:
        """Results per `data.group_by` value into `summary.json`, `groups.md` and TensorBoard, from `results.jsonl`."""
        group_by = trainer.datamodule.hparams.get("group_by")
        if group_by and trainer.is_global_zero and (self.run_dir / SUMMARY).is_file():
            rows = read_jsonl(self.run_dir / RESULTS)
            summary = json.loads((self.run_dir / SUMMARY).read_text())
            summary["groups"] = write_groups(trainer, self.run_dir, rows, group_by)
            atomic_write(self.run_dir / SUMMARY, json.dumps(summary, indent=2).encode())


def check_shared_folder(trainer: Trainer, run_dir: Path) -> None:
    """Every rank must see the one output folder: rank 0 writes a token file that every rank then looks for.

    Ranks on several machines each write their own images, so the folder must be on a filesystem
    they share; on a node-local disk each machine would hold only part of the run.
    """
    token = trainer.strategy.broadcast(secrets.token_hex(8) if trainer.is_global_zero else None, src=0)
    probe = run_dir / f".ranks-{token}"
    if trainer.is_global_zero:
        atomic_write(probe, b"")
    trainer.strategy.barrier("ldm_lightning.run_folder.writer.shared")
    seen = probe.exists()
    everyone = trainer.strategy.reduce_boolean_decision(seen, all=True)
    trainer.strategy.barrier("ldm_lightning.run_folder.writer.shared_checked")
    if trainer.is_global_zero:
        probe.unlink(missing_ok=True)
    if not everyone:
        raise UserError(
            f"output_dir: not every rank sees {run_dir} (rank {trainer.global_rank} "
            f"{'does' if seen else 'does not'}); put --output_dir on a filesystem all machines share"
        )


def drop_pixels(rows: list[dict[str, Any]]) -> None:
    """Free a written batch's images (and saved features): whatever still holds its rows (Lightning's returned
    predictions, if asked for) keeps only the small manifest fields, so memory stays flat however many images a
    run makes."""
    for row in rows:
        row.pop("pixels", None)
        row.pop("features", None)


def flat_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as TensorBoard hparams accept them (no None)."""
    return {k: ("none" if v is None else v) for k, v in settings.items()}


def log_batch(trainer: Trainer, rows: list[dict[str, Any]], batch_idx: int) -> None:
    """One batch's images and prompts (with scores) in TensorBoard."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            images = np.stack([r["pixels"] for r in rows])
            logger.experiment.add_images("test/batch", images, global_step=batch_idx, dataformats="NHWC")
            lines = [f"{r['index']}. {r['prompt']} (CLIPScore {_rounded(r.get('clip_score'))})" for r in rows]
            logger.experiment.add_text("test/batch_prompts", "  \n".join(lines), global_step=batch_idx)


def _rounded(score: float | None) -> str:
    return "–" if score is None else f"{score:.2f}"


def write_groups(trainer: Trainer, run_dir: Path, rows: list[dict[str, Any]], group_by: list[str]) -> dict:
    """Per-group results: `groups.md`, a text table and a bar chart in TensorBoard; returns them for the summary."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from ldm_lightning.evaluation.groups import group_summary, groups_figure, groups_markdown

    groups = group_summary(rows, group_by)
    table = groups_markdown(groups)
    atomic_write(run_dir / GROUPS, table.encode())
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text("test/groups", table)
            logger.experiment.add_figure("test/groups", groups_figure(groups))
    return groups


def save_grid(run_dir: Path, rows: list[dict[str, Any]]) -> Image.Image:
    """All images (up to 64) in one near-square grid, saved as `grid.png`."""
    images = [Image.open(run_dir / r["image"]).convert("RGB") for r in rows]
    cols = min(8, len(images))
    rows_n = -(-len(images) // cols)
    images += [Image.new("RGB", images[0].size)] * (rows_n * cols - len(images))
    grid = make_image_grid(images, rows=rows_n, cols=cols)
    atomic_write(run_dir / GRID, png_bytes(np.asarray(grid)))
    return grid


def log_grid(trainer: Trainer, grid: Image.Image, prompts: list[str]) -> None:
    """The grid and its prompts in TensorBoard, if a TensorBoard logger is attached."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image("samples/grid", np.asarray(grid), dataformats="HWC")
            text = "\n".join(f"{i}. {p}" for i, p in enumerate(prompts))
            logger.experiment.add_text("samples/prompts", text.replace("\n", "  \n"))
            logger.experiment.flush()
