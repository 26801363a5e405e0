"""The command line: `python -m ldm_lightning {predict,test,fit} --config …`, a LightningCLI.

Model keys are `model.*`, data keys `data.*`, precision/devices/strategy/logger `trainer.*`, and
`--output_dir` says where images, manifest, results and TensorBoard logs go.
"""

import sys
from pathlib import Path

from lightning import LightningDataModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from ldm_lightning.console import quiet_known_noise, step_budget_bar
from ldm_lightning.data import PromptDataModule
from ldm_lightning.errors import UserError
from ldm_lightning.export import ExportDiffusers
from ldm_lightning.module import LatentDiffusionModule
from ldm_lightning.outputs import choose_run_dir, fingerprint
from ldm_lightning.writer import ImageWriter


class LdmCLI(LightningCLI):
    """LightningCLI plus `--output_dir` and the image writer for `predict` and `test`.

    With `run=False` there is no subcommand on the command line: `stage` says which one the
    Trainer is set up for, and the caller runs it (`cli.trainer.test(cli.model, datamodule=cli.datamodule)`).
    `run_dir` is the folder the run writes to.
    """

    def __init__(self, *args, stage: str | None = None, **kwargs):
        self.stage = stage
        self.run_dir: Path | None = None
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"data": {"class_path": "ldm_lightning.data.PromptDataModule"}})
        parser.add_argument(
            "--output_dir",
            type=str | None,
            default=None,
            help="Folder for images, manifest.jsonl, results and TensorBoard logs (default: outputs/<subcommand>). "
            "A different run never reuses a folder: it gets <output_dir>-1, -2, …; the same run resumes.",
        )

    def instantiate_trainer(self, **kwargs):
        trainer = self._trainer_with_run_folder(**kwargs)
        start = getattr(trainer.strategy, "_start_method", "popen")
        if start != "popen" and trainer.accelerator.__class__.__name__ == "CPUAccelerator":
            raise UserError(
                f"trainer.strategy: ddp_{start} on CPU shares metric state between ranks and loses "
                "predictions; use `--trainer.strategy ddp` (or --config configs/devices/ddp-cpu-2.yaml)"
            )
        return trainer

    def _trainer_with_run_folder(self, **kwargs):
        """The Trainer, logging into the run's folder, with the image writer (predict, test) or the exporter (fit)."""
        stage = self.subcommand or self.stage
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        base = config.get("output_dir") or f"outputs/{stage}"
        if stage in ("predict", "test") and isinstance(self.datamodule, PromptDataModule):
            precision = config.trainer.get("precision") or "32-true"
            settings = {**self.model.settings(), "precision": str(precision)}
            settings.update(self.model.extra_settings(stage))
            run_fingerprint = fingerprint(settings, self.datamodule.load_rows())
            self.run_dir = run_dir = choose_run_dir(base, run_fingerprint)
            kwargs["default_root_dir"] = str(run_dir)
            if config.trainer.get("logger") in (None, True):
                # No automatic HParams entry: the writer logs the settings that change results, with the score.
                kwargs["logger"] = TensorBoardLogger(
                    save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False
                )
            trainer = super().instantiate_trainer(**kwargs)
            trainer.callbacks.append(ImageWriter(run_dir, settings, run_fingerprint))
            return trainer
        kwargs["default_root_dir"] = base
        if stage == "fit" and config.trainer.get("enable_progress_bar") is not False and (bar := step_budget_bar()):
            # Trainer keyword arguments replace the configured ones: keep the configured callbacks.
            configured = config.trainer.get("callbacks") or []
            kwargs["callbacks"] = [*(configured if isinstance(configured, list) else [configured]), bar]
        trainer = super().instantiate_trainer(**kwargs)
        if stage == "fit":
            trainer.callbacks.append(ExportDiffusers())
        return trainer


def make_cli(args: list[str] | None = None, stage: str | None = None) -> LdmCLI:
    """The CLI on `args`. With `stage` ("predict", "test" or "fit") it only builds model, data and
    Trainer for that stage and returns them on the CLI object, for Python callers such as sweeps."""
    quiet_known_noise()
    return LdmCLI(
        LatentDiffusionModule,
        LightningDataModule,
        subclass_mode_data=True,
        trainer_defaults={"use_distributed_sampler": False},
        save_config_kwargs={"overwrite": True},
        args=args,
        run=stage is None,
        stage=stage,
        auto_configure_optimizers=False,
        seed_everything_default=0,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of `python -m ldm_lightning` and `ldm-lightning`."""
    try:
        make_cli(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
