"""What the rooms may ask of each other, declared (PEP 544): the prompt data, the reference images, the module.

Any object with these members fits; `isinstance` checks them at run time. A data module that is not a
`PromptSource` (a plain `LightningDataModule` whose batches are prompt rows) still works with
`predict` and `test`; the run folder, groups and resume need the rows up front, so they need a source.
"""

from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class PromptSource(Protocol):
    """Prompt rows known before any batch: each a dict with `index`, `prompt`, `negative_prompt`, `seed` and the
    prompt table's other columns. `PromptDataModule` is one."""

    rows: list[dict[str, Any]]  # every row of the run, in index order (after `load_rows` or `setup`)
    group_by: list[str] | None  # columns to summarise `test` results by
    hparams: Any  # its settings (`prompts`, `seed`, `reference`): the run's TensorBoard HParams entry names them

    def load_rows(self) -> list[dict[str, Any]]:
        """Read every row (once) and return them."""

    def skip_rows(self, indices: set[int]) -> None:
        """Leave these rows out of the next `predict` / `test` (a run folder holds them)."""


@runtime_checkable
class ReferenceSource(Protocol):
    """Real images for the set metrics (FID, KID, CMMD, FD-*)."""

    reference: str | None  # as the user gave it: folder, glob or table
    reference_files: list[Path] | None  # after `setup("test")`


@runtime_checkable
class RunModule(Protocol):
    """What a run folder's writer asks of the module."""

    summary: dict[str, Any] | None  # the last `test`'s summary

    def run_settings(self, precision: str, stage: str) -> dict[str, Any]:
        """Everything besides the prompt rows that changes this run's images (and, for `test`, its scores)."""

    def restore_results(self, rows: list[dict[str, Any]], features: dict[str, Any]) -> None:
        """Rows an earlier, interrupted run of the same settings finished: they join this run's summary."""

    def stored_features(self) -> list[str]:
        """The feature sets whose per-image features the run folder keeps for resuming."""


@runtime_checkable
class ImageSize(Protocol):
    """A module that samples at a known size: what a training data module may take its resolution from."""

    height: int
    width: int
