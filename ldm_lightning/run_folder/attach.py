"""Give a Trainer a run folder: pick a free one (or the one this very run left), log there, write there.

The command line does this for `predict` and `test`, and so does a sweep for each of its runs; in your
own script `Trainer(callbacks=[ImageWriter(folder)])` is all it takes when you choose the folder yourself.
"""

from pathlib import Path

from lightning import LightningDataModule, LightningModule, Trainer

from ldm_lightning.run_folder.files import check_writable, choose_run_dir, fingerprint
from ldm_lightning.run_folder.scoreboard import ScoreboardLogger
from ldm_lightning.run_folder.writer import ImageWriter


def attach_run_folder(
    trainer: Trainer,
    module: LightningModule,
    datamodule: LightningDataModule,
    stage: str,
    base: str | Path,
    tensorboard: bool = True,
) -> Path:
    """`base`, or `base-1`, `base-2`, … when `base` holds another run: the Trainer's TensorBoard logger
    (with `tensorboard`) and an `ImageWriter` go there. Returns the folder."""
    settings = module.run_settings(trainer.precision, stage)
    run_dir = choose_run_dir(base, fingerprint(settings, datamodule.load_rows()))
    check_writable(run_dir)
    if tensorboard:
        # No automatic HParams entry: the module logs the settings that change results, and the scores.
        trainer.loggers = [ScoreboardLogger(save_dir=str(run_dir), name="tensorboard", version="")]
    trainer.callbacks.append(ImageWriter(run_dir))
    return run_dir
