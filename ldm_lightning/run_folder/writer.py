"""A Lightning callback that keeps a run folder: one PNG and one manifest row per image, on every process.

    Trainer(callbacks=[ImageWriter("outputs/mine")]).test(module, datamodule=data)

writes `<index>-<prompt>.png`, `manifest.jsonl`, and for `test` `results.jsonl` (each image's scores),
`summary.json` (the module's summary), `groups.md`, and `grid.png`. The folder is tied to one run
(`run.json`: the fingerprint of the module's settings and the prompt rows): the same run started again
resumes it, doing only the rows it does not hold yet; a different run is refused, so nothing is mixed
or overwritten. The writer only writes: the module scores and summarizes, the data module skips
finished rows, the metric state gathers them across processes.

Each process appends its rows to files of its own (rank 0 to `manifest.jsonl` and `results.jsonl`, rank R to
`manifest-rankR.jsonl` and `results-rankR.jsonl`), since appends of several machines to one file on a shared
filesystem such as NFS can interleave or overwrite each other. Rank 0 alone merges them into the two sorted files
when the run ends and when it resumes, and only it reads what an earlier run left (PNGs, feature shards); what it
finds, or the error it meets, it tells every rank, so all of them go on or stop together.
"""

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
from ldm_lightning.inspection.batch import inspection_files
from ldm_lightning.inspection.board import log_inspection
from ldm_lightning.interfaces import PromptSource, RunModule
from ldm_lightning.png import png_bytes
from ldm_lightning.run_folder.files import (
    GRID,
    GROUPS,
    MANIFEST,
    RESULTS,
    RUN_FILE,
    SUMMARY,
    append_jsonl,
    atomic_write,
    fingerprint,
    image_name,
    load_features,
    merge_rank_files,
    on_disk,
    rank_file,
    rank_files,
    read_rank_files,
    save_features,
)

MAX_GRID_IMAGES = 64
MAX_INSPECTED_LOGGED = 16  # the grid's first images whose attention maps and trajectories go to TensorBoard


class ImageWriter(BasePredictionWriter):
    """Writes a run folder for `predict` and `test` (see the module docstring).

    Args:
        output_dir: the run's folder; created if missing. A folder that holds a different run is refused.
    """

    def __init__(self, output_dir: str | Path):
        super().__init__(write_interval="batch")
        self.run_dir = Path(output_dir)
        self.manifest = self.run_dir / MANIFEST
        self.results = self.run_dir / RESULTS
        self.rank = 0  # this process's rank: it appends to its own manifest and results files (`rank_file`)
        self.settings: dict[str, Any] = {}
        self.started = 0.0
        self.columns: dict[int, dict[str, Any]] = {}  # a prompt table's other columns, by row index
        self.finished: set[int] = set()  # rows the folder held at start: never written again

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage not in ("predict", "test"):
            return
        datamodule = trainer.datamodule
        if not isinstance(datamodule, PromptSource) or not isinstance(pl_module, RunModule):
            raise UserError(
                "ImageWriter: needs the prompt rows up front (a PromptSource such as PromptDataModule) and a "
                "LatentDiffusionModule; pass them with trainer.test(module, datamodule=PromptDataModule(...))"
            )
        self.settings = pl_module.run_settings(str(trainer.precision), stage)
        run_fingerprint = fingerprint(self.settings, datamodule.rows)
        self.rank = trainer.global_rank
        self.run_dir.mkdir(parents=True, exist_ok=True)
        restored = self._open_together(trainer, pl_module, run_fingerprint, stage)
        check_shared_folder(trainer, self.run_dir)
        datamodule.skip_rows(self.finished)
        if restored is not None:  # on rank 0, which alone adds earlier rows to the summary (`restore_results`)
            pl_module.restore_results(*restored)
        self.columns = {r["index"]: {k: v for k, v in r.items() if k not in ROW_KEYS} for r in datamodule.rows}
        total, finished = len(datamodule.rows), len(self.finished)
        if finished and finished >= total:
            again = " (scoring one image again to report the scores of all)" if stage == "test" else ""
            rank_zero_info(f"Nothing left to do: all {total} samples are finished in {self.run_dir}{again}.")
        elif finished:
            rank_zero_info(f"Resuming {self.run_dir}: {finished} of {total} images already done.")
        self.started = time.perf_counter()

    def _open_together(
        self, trainer: Trainer, pl_module: LightningModule, run_fingerprint: str, stage: str
    ) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        """Rank 0 claims the folder and reads what it holds; every rank learns which rows are finished (`finished`),
        or raises the error rank 0 met (a refused folder, a damaged file), so that no rank waits for a partner that
        has given up. Returns, on rank 0 when testing, the finished rows and their stored features."""
        done: dict[int, dict[str, Any]] = {}
        restored = None
        failure: BaseException | None = None
        if trainer.is_global_zero:
            try:
                self._claim(run_fingerprint, stage)
                done = self._merge(stage)
                if stage == "test" and done:
                    indices = sorted(done)
                    features = load_features(self.run_dir, indices) if pl_module.stored_features() else {}
                    restored = ([done[i] for i in indices], features)
            except Exception as err:
                failure = err
        shared = failure if isinstance(failure, UserError | OSError) else None
        if failure is not None and shared is None:  # a bug: its traceback stays on rank 0
            shared = RuntimeError(f"rank 0 could not open {self.run_dir}: {type(failure).__name__}: {failure}")
        error, finished = trainer.strategy.broadcast((shared, sorted(done)), src=0)
        if failure is not None:
            raise failure
        if error is not None:
            raise error
        self.finished = set(finished)
        return restored

    def _claim(self, run_fingerprint: str, stage: str) -> None:
        """Record the run in `run.json`, or check that the folder holds this very run."""
        run_file = self.run_dir / RUN_FILE
        if run_file.is_file():
            held = json.loads(run_file.read_text()).get("fingerprint")
            if held != run_fingerprint:
                raise UserError(
                    f"output_dir: {self.run_dir} holds another run (other settings or prompts); choose another "
                    "folder (the command line picks <folder>-1, -2, … by itself)"
                )
        else:
            run = {"fingerprint": run_fingerprint, "stage": stage, "settings": self.settings}
            atomic_write(run_file, json.dumps(run, indent=2).encode())

    def _merge(self, stage: str) -> dict[int, dict[str, Any]]:
        """Fold every rank's manifest and results files of earlier runs into the folder's own, one whole row per
        image on disk, and return the finished rows (their PNGs decoded: a run killed mid-write may have left one
        torn). Afterwards every file is free of torn last lines, so rows appended later stay whole."""
        done: dict[int, dict[str, Any]] = {}
        for path in (self.manifest, self.results):
            if not any(part.is_file() for part in rank_files(path)):
                continue
            kept = merge_rank_files(path, on_disk(self.run_dir, decode=path == self.done_file(stage)))
            if path == self.done_file(stage):
                done = {index: json.loads(line) for index, line in kept.items()}
        return done

    def done_file(self, stage: str) -> Path:
        """The file whose rows mark a sample finished: the manifest, or the scores when testing."""
        return self.results if stage == "test" else self.manifest

    def manifest_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """The JSON row of one image: prompt row, file name, settings and health flags."""
        name = image_name(row["index"], row["prompt"])
        kept = {k: v for k, v in row.items() if k not in ("pixels", "features", "inspection")}
        return {**self.columns.get(row["index"], {}), **kept, "image": name, **self.settings}

    def write_rows(self, rows: list[dict[str, Any]], results: bool = False) -> None:
        """Save each row's image, then its manifest row (and with `results` its results row) in this rank's files:
        the image is on disk before its row. A row the folder already held (a finished run scored again) is left
        as it is."""
        for row in rows:
            if row["index"] in self.finished:
                continue
            out = self.manifest_row(row)
            # Inspection files (attention maps, trajectory) first: an image on disk has all of its files.
            for suffix, data in inspection_files(row.get("inspection") or {}).items():
                atomic_write(self.run_dir / out["image"].replace(".png", suffix), data)
            atomic_write(self.run_dir / out["image"], png_bytes(row["pixels"]))
            append_jsonl(rank_file(self.manifest, self.rank), out)
            if results:
                append_jsonl(rank_file(self.results, self.rank), out)

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
            done = len({r["index"] for r in read_rank_files(self.manifest) if on_disk(self.run_dir, decode=False)(r)})
            raise SIGTERMException(f"SIGTERM received; {done} finished images are kept in {self.run_dir}")

    def finish(self, trainer: Trainer, results: bool = False) -> None:
        """After all processes: merge the ranks' manifests (and results) into one sorted file each, draw the grid."""
        trainer.strategy.barrier("ldm_lightning.writer.finish")
        if not trainer.is_global_zero:
            return
        done = merge_rank_files(self.manifest, on_disk(self.run_dir, decode=False))  # rows written whole
        if done:
            shown = merge_rank_files(self.results, on_disk(self.run_dir, decode=False)) if results else done
            first = [json.loads(done[i]) for i in sorted(done)[:MAX_GRID_IMAGES]]  # the rest stay lines of JSON
            grid = save_grid(self.run_dir, [json.loads(shown[i]) for i in sorted(shown)[:MAX_GRID_IMAGES]])
            log_grid(trainer, grid, first)
            log_inspection(trainer, self.run_dir, first[:MAX_INSPECTED_LOGGED])
            seconds = time.perf_counter() - self.started
            images = f"{len(done)} image" + "s" * (len(done) != 1)
            rank_zero_info(f"{images} in {self.run_dir} (grid: {self.run_dir / GRID}), {seconds:.1f} s")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.finish(trainer)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        new = [row for row in outputs if row["index"] not in self.finished]
        save_features(self.run_dir, trainer.global_rank, new)  # before the rows that mark them finished
        self.write_rows(outputs, results=True)
        if trainer.is_global_zero:
            log_batch(trainer, outputs, batch_idx)
        drop_pixels(outputs)
        self.stop_if_preempted(trainer)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.finish(trainer, results=True)
        summary = pl_module.summary
        if trainer.is_global_zero and summary is not None:
            atomic_write(self.run_dir / SUMMARY, json.dumps({**summary, "settings": self.settings}, indent=2).encode())
            if summary.get("groups"):
                write_groups(trainer, self.run_dir, summary["groups"])


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
        row.pop("inspection", None)


def log_batch(trainer: Trainer, rows: list[dict[str, Any]], batch_idx: int) -> None:
    """One batch in TensorBoard: its images as one grid, each captioned with its row, prompt, seed and scores, and
    its prompts as text. TensorBoard shows 10 steps of an image tag unless started with
    `--samples_per_plugin images=N`; `samples/grid` holds the first 64 images whatever the number of batches."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            grid = captioned_grid([Image.fromarray(r["pixels"]) for r in rows], rows)
            logger.experiment.add_image("test/batch", np.asarray(grid), global_step=batch_idx, dataformats="HWC")
            lines = [f"{row_label(r)} {r['prompt']} (CLIPScore {_rounded(r.get('clip_score'))})" for r in rows]
            logger.experiment.add_text("test/batch_prompts", "  \n".join(lines), global_step=batch_idx)


def _rounded(score: float | None) -> str:
    return "–" if score is None else f"{score:.2f}"


def write_groups(trainer: Trainer, run_dir: Path, groups: dict) -> None:
    """Per-group results as `groups.md`, and a text table and a chart (`groups_figure`) in TensorBoard."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from ldm_lightning.evaluation.groups import groups_figure, groups_markdown

    table = groups_markdown(groups)
    atomic_write(run_dir / GROUPS, table.encode())
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text("test/groups", table)
            logger.experiment.add_figure("test/groups", groups_figure(groups))


CAPTION_SCORES = {
    "clip_score": "CLIP",
    "pick_score": "Pick",
    "hpsv2": "HPS",
    "aesthetic": "aesth",
    "geneval": "GenEval",
}


def caption_lines(row: dict[str, Any], chars: int) -> list[str]:
    """An image's caption: index and prompt (wrapped, at most three lines), seed, and its scores when it has them."""
    import textwrap

    prompt = textwrap.wrap(f"{row['index']}. {row['prompt']}", chars, max_lines=3, placeholder=" …")
    scores = [f"{short} {row[k]:.2f}" for k, short in CAPTION_SCORES.items() if isinstance(row.get(k), (int, float))]
    return [*prompt, f"seed {row['seed']}", *textwrap.wrap(" · ".join(scores), chars)]


def captioned(image: Image.Image, lines: list[str], width: int, height: int) -> Image.Image:
    """The image scaled to `width` (nearest neighbour: small images stay sharp) above a white caption strip."""
    from PIL import ImageDraw

    scaled = image.resize((width, round(image.height * width / image.width)), Image.NEAREST)
    cell = Image.new("RGB", (width, scaled.height + height), "white")
    cell.paste(scaled)
    draw = ImageDraw.Draw(cell)
    for n, line in enumerate(lines):
        draw.text((3, scaled.height + 2 + 11 * n), line, fill="black")  # PIL's default bitmap font: 11 px a line
    return cell


def captioned_grid(images: list[Image.Image], rows: list[dict[str, Any]]) -> Image.Image:
    """The images in one near-square grid (8 columns at most), each above its caption (`caption_lines`)."""
    width = max(160, images[0].width)
    captions = [caption_lines(r, chars=width // 7) for r in rows]
    height = 4 + 11 * max(len(c) for c in captions)
    cells = [captioned(image.convert("RGB"), c, width, height) for image, c in zip(images, captions)]
    cols = min(8, len(cells))
    rows_n = -(-len(cells) // cols)
    cells += [Image.new("RGB", cells[0].size, "white")] * (rows_n * cols - len(cells))
    return make_image_grid(cells, rows=rows_n, cols=cols)


def save_grid(run_dir: Path, rows: list[dict[str, Any]]) -> Image.Image:
    """All images (up to 64) in one near-square grid, each captioned with its prompt, seed and scores, as `grid.png`."""
    grid = captioned_grid([Image.open(run_dir / r["image"]) for r in rows], rows)
    atomic_write(run_dir / GRID, png_bytes(np.asarray(grid)))
    return grid


def row_label(row: dict[str, Any]) -> str:
    """A row's index as its image file starts (`00044`), in code style: Markdown would renumber "44." from 1."""
    return f"`{row['index']:05d}`"


def log_grid(trainer: Trainer, grid: Image.Image, rows: list[dict[str, Any]]) -> None:
    """The grid and its prompts (each with its row index) in TensorBoard, if a TensorBoard logger is attached."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image("samples/grid", np.asarray(grid), dataformats="HWC")
            text = "\n".join(f"{row_label(r)} {r['prompt']}" for r in rows)
            logger.experiment.add_text("samples/prompts", text.replace("\n", "  \n"))
            logger.experiment.flush()
