"""The command line: `python -m ldm_lightning {predict,test,fit} --config …`, a LightningCLI.

Model keys are `model.*`, data keys `data.*`, precision/devices/strategy/logger `trainer.*`, and
`--output_dir` says where images, manifest, results and TensorBoard logs go.

Every mistake a user can make ends in one line, `error: <key or file>: <what is wrong>; <what to do>`,
and exit code 2: `UserError`s raised anywhere (jsonargparse wraps those of constructors in its own
errors, so the cause chain is searched), jsonargparse's parse errors, the Trainer's refusals, and the
operating system's write errors (full disk, read-only or unwritable folder). SIGTERM ends a run after
the images in flight are written, with exit code 143 and a line saying that the same command resumes.
"""

import re
import sys
from dataclasses import asdict
from pathlib import Path

from lightning import LightningDataModule
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ldm_lightning.console import quiet_known_noise, quiet_seed_message, step_budget_bar
from ldm_lightning.data import PromptDataModule
from ldm_lightning.errors import DISK_FULL, NOT_WRITABLE, UserError, first_line
from ldm_lightning.generation.export import ExportDiffusers
from ldm_lightning.generation.sampler import Sampling
from ldm_lightning.inspection.batch import Inspection
from ldm_lightning.memory import check_fits
from ldm_lightning.module import LatentDiffusionModule
from ldm_lightning.parse_errors import OneLineParser
from ldm_lightning.run_folder.attach import attach_run_folder
from ldm_lightning.run_folder.writer import ImageWriter

TRAINER_KEYS = ("accelerator", "strategy", "devices", "num_nodes", "precision")
PROMPT_DATA = "ldm_lightning.data.PromptDataModule"
WORKER_TERMINATED = re.compile(r"DataLoader worker \(pid[^)]*\) is killed by signal: Terminated")
FIT_DATA = "ldm_lightning.finetune.images.ImageCaptionDataModule"
# The default guidance (the embedded model's scale); SD v1.4's configs set 7.5.
DEFAULT_GUIDANCE = {
    "class_path": "ldm_lightning.generation.guidance.ClassifierFreeGuidance",
    "init_args": {"guidance_scale": 3.0},
}


def trainer_error(err: Exception) -> UserError:
    """A Trainer refusal (no GPU here, unknown strategy, bad devices) as a line naming the `trainer.*` key."""
    text = first_line(err).rstrip(".!")
    # Lightning names the argument in backticks (`devices`); else guess from the words it uses.
    named = [k for k in re.findall(r"`(\w+)`", text) if k in TRAINER_KEYS]
    named += [k for k in TRAINER_KEYS if k in text.lower()]
    if not named and re.search(r"gpu|cuda|mps|tpu", text, re.I):
        named = ["accelerator"]
    key = f"trainer.{named[0]}" if named else "trainer"
    return UserError(
        f"{key}: {text}; choose what this machine has (--trainer.accelerator cpu or auto, --trainer.devices 1, "
        "--trainer.strategy auto or ddp)"
    )


class LdmCLI(LightningCLI):
    """LightningCLI plus `--output_dir` and the image writer for `predict` and `test`.

    With `run=False` there is no subcommand on the command line: `stage` says which one the
    Trainer is set up for, and the caller runs it (`cli.trainer.test(cli.model, datamodule=cli.datamodule)`).
    `run_dir` is the folder the run writes to.
    """

    def __init__(self, *args, stage: str | None = None, parser_class=OneLineParser, **kwargs):
        self.stage = stage
        self.run_dir: Path | None = None
        super().__init__(*args, parser_class=parser_class, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        data = FIT_DATA if self.stage == "fit" else PROMPT_DATA
        # The parts' defaults shown in --help and --print_config (the module's None means the same).
        parts = {"model.sampling": asdict(Sampling()), "model.inspect": asdict(Inspection())}
        parser.set_defaults({"data": {"class_path": data}, "model.guidance": DEFAULT_GUIDANCE, **parts})
        parser.add_argument(
            "--output_dir",
            type=str | None,
            default=None,
            help="Folder for images, manifest.jsonl, results and TensorBoard logs (default: outputs/<subcommand>). "
            "A different run never reuses a folder: it gets <output_dir>-1, -2, …; the same run resumes.",
        )

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            # The writer saves every image; holding them all as well would grow memory with the run.
            parser.set_defaults({"return_predictions": False})
        if subcommand == "fit":  # `fit --data.path my_images/` as a user first types it
            parser.set_defaults({"data": {"class_path": FIT_DATA}})
        return parser

    @staticmethod
    def configure_optimizers(lightning_module, optimizer, lr_scheduler=None):
        """`--optimizer` / `--lr_scheduler` stepped per optimizer step (LightningCLI's default is per epoch, which
        would hold a warm-up for a whole epoch); `WarmupCosine` learns the run's length from the Trainer."""
        from ldm_lightning.finetune.method import WarmupCosine

        if lr_scheduler is None:
            return optimizer
        if isinstance(lr_scheduler, WarmupCosine) and lr_scheduler.total_steps is None:
            lr_scheduler.total_steps = lightning_module.trainer.estimated_stepping_batches
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}

    def instantiate_trainer(self, **kwargs):
        try:
            trainer = self._trainer_with_run_folder(**kwargs)
        except (MisconfigurationException, TypeError, ImportError) as err:
            raise trainer_error(err) from None
        start = getattr(trainer.strategy, "_start_method", "popen")
        if start != "popen" and trainer.accelerator.__class__.__name__ == "CPUAccelerator":
            raise UserError(
                f"trainer.strategy: ddp_{start} on CPU shares metric state between ranks and loses "
                "predictions; use `--trainer.strategy ddp` (or --config configs/devices/ddp-cpu-2.yaml)"
            )
        return trainer

    def _trainer_with_run_folder(self, **kwargs):
        """The Trainer, with a run folder, the image writer and TensorBoard (predict, test) or the exporter (fit)."""
        stage = self.subcommand or self.stage
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        base = config.get("output_dir") or f"outputs/{stage}"
        if stage in ("predict", "test") and isinstance(self.datamodule, PromptDataModule):
            if stage == "test":  # a CLIP or feature network that cannot load fails here, before any file is written
                self.model.scoring.load()
            check_fits(self.model, self.datamodule.hparams.batch_size, config.trainer.get("accelerator"))
            tensorboard = config.trainer.get("logger") in (None, True)
            if tensorboard:
                kwargs["logger"] = False  # added in the run folder, which depends on the Trainer's precision
            trainer = super().instantiate_trainer(**kwargs)
            self.run_dir = attach_run_folder(trainer, self.model, self.datamodule, stage, base, tensorboard)
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


class SaveConfigToRunFolder(SaveConfigCallback):
    """Lightning's `config.yaml` of the command line: in the run folder for `predict` and `test` (chosen after
    the Trainer is built, so not Lightning's log folder), in the log folder for `fit`."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.save_to_log_dir = self._writer(trainer) is None
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if (writer := self._writer(trainer)) is not None:
            writer.run_dir.mkdir(parents=True, exist_ok=True)
            path = str(writer.run_dir / self.config_filename)
            self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=self.multifile)

    @staticmethod
    def _writer(trainer) -> ImageWriter | None:
        return next((c for c in trainer.callbacks if isinstance(c, ImageWriter)), None)


def make_cli(args: list[str] | None = None, stage: str | None = None, cli_class: type[LdmCLI] | None = None) -> LdmCLI:
    """The CLI on `args`. With `stage` ("predict", "test" or "fit") it only builds model, data and
    Trainer for that stage and returns them on the CLI object, for Python callers such as sweeps."""
    quiet_known_noise()
    quiet_seed_message()
    return (cli_class or LdmCLI)(
        LatentDiffusionModule,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_callback=SaveConfigToRunFolder,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=stage is None,
        stage=stage,
        seed_everything_default=0,
    )


class ParseOnly(LdmCLI):
    """The command line parsed and checked, nothing built."""

    def instantiate_classes(self) -> None:
        pass


def parse_config(args: list[str], stage: str = "test"):
    """The configuration `args` describe (YAML files and overrides, type-checked), without building anything:
    a jsonargparse Namespace with `model` (constructor arguments), `data` (`class_path`, `init_args`),
    `trainer` and `output_dir`. For Python callers that build many runs from one command line (sweeps)."""
    return make_cli(args, stage, ParseOnly).config


def user_message(err: BaseException, args: list[str]) -> str | None:
    """The one line for an error the user can fix, or None for a bug (which keeps its traceback)."""
    seen = 0
    cause: BaseException | None = err
    while cause is not None and seen < 20:
        if isinstance(cause, UserError):
            message = str(cause)
            if message.startswith("--config: not valid YAML"):
                message = name_bad_config(message, args)
            return message
        if isinstance(cause, OSError) and cause.errno in DISK_FULL | NOT_WRITABLE:
            where = cause.filename or "output_dir"
            if cause.errno in DISK_FULL:
                return (
                    f"{where}: {cause.strerror} (disk full or file-size limit); free space and run the same "
                    "command again: finished images are kept and the run resumes"
                )
            return f"{where}: {cause.strerror}; choose a writable --output_dir"
        if isinstance(cause, ValueError) and (line := part_init_error(str(cause))):
            return line
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return None


def part_init_error(text: str) -> str | None:
    """A part (`class_path` + `init_args`) whose own constructor refused its arguments, as jsonargparse reports it:
    the class and its constructor's words, or None for any other error."""
    found = re.search(r"Given value: Namespace\(class_path='([\w.]+)'", text)
    if not found:
        return None
    reasons = [
        line.strip(" -")
        for line in text.splitlines()
        if line.strip().startswith("- ") and "does not correspond to a subclass" not in line and "NoneType" not in line
    ]
    if not reasons:
        return None
    reason = reasons[0].rstrip(".")
    return f"{found[1]}: {reason}; give the init args it needs (`--model.<part>.help {found[1]}` lists them)"


def name_bad_config(message: str, args: list[str]) -> str:
    """Put the name of the first `--config` file that is not valid YAML into `message`."""
    import yaml

    for i, arg in enumerate(args):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else args[i + 1] if arg == "--config" else None
        if path and Path(path).is_file():
            try:
                yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError):
                return message.replace("--config:", f"{path}:", 1)
    return message


def main(args: list[str] | None = None) -> None:
    """Entry point of `python -m ldm_lightning` and `ldm-lightning`."""
    argv = list(sys.argv[1:] if args is None else args)
    try:
        make_cli(args)
    except (SIGTERMException, RuntimeError) as stop:
        if isinstance(stop, RuntimeError) and not WORKER_TERMINATED.search(str(stop)):
            raise
        # DataLoader workers share the process group and get the SIGTERM too: their death is the same stop.
        reason = str(stop) if isinstance(stop, SIGTERMException) and str(stop) else "SIGTERM received"
        again = (
            "resume from the last checkpoint with the same command and --ckpt_path last"
            if "fit" in argv
            else "run the same command again to resume"
        )
        print(f"stopped: {reason}; {again}", file=sys.stderr)
        sys.exit(143)  # 128 + SIGTERM, as a shell reports a terminated process
    except Exception as err:
        message = user_message(err, argv)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
