"""The real images set metrics compare with: checked before sampling, their features loaded on rank 0."""

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from ldm_lightning.errors import UserError
from ldm_lightning.interfaces import PromptSource, ReferenceSource


def check_reference(datamodule: Any, scoring) -> None:
    """Fail before any sampling when set metrics are asked for without real images or with a single prompt."""
    names = [m.name for m in scoring.set_metrics]
    if not isinstance(datamodule, ReferenceSource) or not datamodule.reference:
        raise UserError(
            f"data.reference: model.metrics {names} compare generated with real images; "
            "pass --data.reference FOLDER, GLOB or TABLE (PromptDataModule(reference=...) in Python)"
        )
    if isinstance(datamodule, PromptSource) and len(datamodule.load_rows()) < 2:
        raise UserError(f"data.prompts: set metrics need at least 2 generated images, got {len(datamodule.rows)}")


def load_reference(datamodule: ReferenceSource, scoring, device: torch.device) -> dict[str, Any]:
    """The reference images' features per feature set (cached on disk), the skipped files and where they came from."""
    from ldm_lightning.evaluation.real_images import reference_cache_dir

    cache_dir = reference_cache_dir()
    features, skipped = scoring.reference(datamodule.reference_files, cache_dir, device)
    n = len(next(iter(features.values())))
    if n < 2:
        raise UserError(f"data.reference: {n} readable image; set metrics need at least 2")
    note = f", {len(skipped)} unreadable skipped" if skipped else ""
    rank_zero_info(f"reference: {n} images{note}; features cached in {cache_dir}")
    return {"features": features, "skipped": skipped, "spec": datamodule.reference}
