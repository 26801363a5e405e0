"""What a run prints: progress, where the outputs went, the score — not third-party noise the user cannot act on.

Silenced, each by its exact text so that every other warning still shows:
- Lightning's advertising tips ("💡 Tip: … litlogger / litmodels");
- the `LeafSpec` deprecation that Lightning 2.6 triggers inside its own pytree helper;
- transformers' per-file "Loading weights" progress bars (the models here load in well under a second).
"""

import logging
import warnings


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet_known_noise() -> None:
    """Install the filters above (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
