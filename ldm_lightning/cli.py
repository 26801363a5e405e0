"""The command line: `python -m ldm_lightning {predict,test,fit} --config …`, a LightningCLI.

Model keys are `model.*`, data keys `data.*`, precision/devices/strategy/logger `trainer.*`, and
`--output_dir` says where images, manifest, results and TensorBoard logs go.
"""

import sys

from lightning import LightningDataModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from ldm_lightning.data import PromptDataModule
from ldm_lightning.errors import UserError
from ldm_lightning.export import ExportDiffusers
from ldm_lightning.module import LatentDiffusionModule
from ldm_lightning.outputs import choose_run_dir, fingerprint
from ldm_lightning.writer import ImageWriter


class LdmCLI(LightningCLI):
    """LightningCLI plus `--output_dir` and the image writer for `predict` and `test`."""

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
        trainer = self._instantiate(**kwargs)
        start = getattr(trainer.strategy, "_start_method", "popen")
        if start != "popen" and trainer.accelerator.__class__.__name__ == "CPUAccelerator":
            raise UserError(
                f"trainer.strategy: ddp_{start} on CPU shares metric state between ranks and loses "
                "predictions; use `--trainer.strategy ddp` (or --config configs/devices/ddp-cpu-2.yaml)"
            )
        return trainer

    def _instantiate(self, **kwargs):
        config = self.config_init[self.subcommand]
        base = config.get("output_dir") or f"outputs/{self.subcommand}"
        if self.subcommand in ("predict", "test") and isinstance(self.datamodule, PromptDataModule):
            precision = config.trainer.get("precision") or "32-true"
            settings = {**self.model.settings(), "precision": str(precision)}
            settings.update(self.model.extra_settings(self.subcommand))
            run_fingerprint = fingerprint(settings, self.datamodule.load_rows())
            run_dir = choose_run_dir(base, run_fingerprint)
            kwargs["default_root_dir"] = str(run_dir)
            if config.trainer.get("logger") in (None, True):
                kwargs["logger"] = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")
            trainer = super().instantiate_trainer(**kwargs)
            trainer.callbacks.append(ImageWriter(run_dir, settings, run_fingerprint))
            return trainer
        kwargs["default_root_dir"] = base
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "fit":
            trainer.callbacks.append(ExportDiffusers())
        return trainer


def main(args: list[str] | None = None) -> None:
    """Entry point of `python -m ldm_lightning` and `ldm-lightning`."""
    try:
        LdmCLI(
            LatentDiffusionModule,
            LightningDataModule,
            subclass_mode_data=True,
            trainer_defaults={"use_distributed_sampler": False},
            save_config_kwargs={"overwrite": True},
            args=args,
            auto_configure_optimizers=False,
            seed_everything_default=0,
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
