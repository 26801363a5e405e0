"""What a run prints: progress, where the outputs went, the score — not third-party noise the user cannot act on.

Silenced, each by its exact text so that every other warning still shows:
- Lightning's advertising tips ("💡 Tip: … litlogger / litmodels");
- diffusers' note, at every guider built, that guiders are experimental;
- the `LeafSpec` deprecation that Lightning 2.6 triggers inside its own pytree helper;
- transformers' per-file "Loading weights" progress bars (the models load in well under a second);
- `fit`'s warning that modules start in eval mode: the frozen VAE and text encoder are meant to;
- LightningCLI's note that `--optimizer` replaces the module's own `configure_optimizers` (its purpose);
- the traceback of TensorBoard's event-writer thread when the disk is full or the folder unwritable:
  the writer hands that error to the main thread, where the command line reports it in one line.
Long steps outside Lightning's loops (encoding the training images once) get a bar of their own
(`shows_progress`). And `fit` bounded by steps reads "Epoch 3 (max_steps 2400)" instead of Lightning's "Epoch 3/-2".
"""

import logging
import threading
import warnings

from ldm_lightning.errors import DISK_FULL, NOT_WRITABLE

GUIDERS_LOG = "diffusers.guiders.guider_utils"  # "Guiders are currently an experimental feature …" per guider


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("💡 Tip:", "Guiders are currently an experimental feature"))


def quiet_known_noise() -> None:
    """Install the filters above (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", GUIDERS_LOG):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # The config files' --optimizer / --lr_scheduler replace the module's defaults, as intended.
    warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden by")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    if not isinstance(threading.excepthook, _QuietEventWriterErrors):
        threading.excepthook = _QuietEventWriterErrors(threading.excepthook)


class _QuietEventWriterErrors:
    """A `threading.excepthook` that passes every thread's error on, except a write error that
    TensorBoard's event-writer thread has handed over to the main thread.

    `tensorboard.summary.writer.event_file_writer._AsyncWriterThread` stores the exception it dies
    of (`thread.exception`) and re-raises it so that it is printed, and the logger's next write or
    flush raises the stored one in the main thread (the Trainer flushes its loggers when a run ends
    or fails). Printed from the thread as well, a full disk shows a traceback before the one line.
    """

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, args: threading.ExceptHookArgs) -> None:
        handed_over = args.thread is not None and getattr(args.thread, "exception", None) is args.exc_value
        from_event_writer = type(args.thread).__module__ == "tensorboard.summary.writer.event_file_writer"
        write_error = isinstance(args.exc_value, OSError) and args.exc_value.errno in DISK_FULL | NOT_WRITABLE
        if not (handed_over and from_event_writer and write_error):
            self.previous(args)


class _DropSeedMessage(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Seed set to" not in str(record.msg)


def quiet_seed_message() -> None:
    """Drop Lightning's "Seed set to 0": the command line seeds every run (images take their seeds from
    the prompt rows), and the line would precede a one-line error about the user's input (idempotent)."""
    logger = logging.getLogger("lightning.fabric.utilities.seed")
    if not any(isinstance(f, _DropSeedMessage) for f in logger.filters):
        logger.addFilter(_DropSeedMessage())


def step_budget_bar():
    """Lightning's rich progress bar, naming the step budget when `max_epochs` is unbounded; None without rich."""
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    if not _RICH_AVAILABLE:
        return None  # the tqdm bar shows "Epoch N" alone, which is right as it is

    class StepBudgetBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            if self.trainer.max_epochs == -1 and self.trainer.max_steps > 0:
                return f"Epoch {current_epoch} (max_steps {self.trainer.max_steps})"
            return super()._get_train_description(current_epoch)

    return StepBudgetBar()


def shows_progress(trainer) -> bool:
    """Whether a data module's own long step (encoding, checking images) shows a bar: on rank 0 only,
    and not when the Trainer's progress bar is off (`enable_progress_bar=False`); always by hand."""
    if trainer is None:  # set up by hand, outside a Trainer
        return True
    return trainer.is_global_zero and trainer.progress_bar_callback is not None
