"""Prompt rows for `predict` and `test`: read from a list or a file, seeded, split across ranks exactly once."""

import json
from pathlib import Path
from typing import Any

import torch
from lightning import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ldm_lightning.errors import UserError
from ldm_lightning.locations import written_as_path
from ldm_lightning.tables import (
    check_text_file,
    is_saved_dataset,
    is_table_file,
    parser_error,
    read_saved_dataset,
    read_table_file,
)

# Prompts the embedded tiny-shapes model understands; any text works with real SD weights.
EXAMPLE_PROMPTS = [
    "a red circle",
    "a large blue square at the top",
    "a small green triangle on the left",
    "a yellow star",
    "a purple cross at the bottom",
    "a large white circle on the right",
    "blue star on the left",
    "a small red square in the center",
]
# Keys of a prompt row; every other scalar column of a prompt table rides along into the manifest and results.
ROW_KEYS = ("index", "prompt", "negative_prompt", "seed")
# A prompt's own list of seeds, one image each (`"1,5,9"` in a CSV cell, `[1, 5, 9]` in JSONL).
SEEDS_COLUMN = "seeds"


def used_seed(seed, where: str) -> int:
    """The seed torch uses for `seed` (0 ≤ s < 2**64); refuse what `torch.Generator.manual_seed` refuses."""
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"{where}: seed {seed!r} is not an integer; give a whole number")
    try:
        used = torch.Generator().manual_seed(seed).initial_seed()
    except (RuntimeError, ValueError, OverflowError):
        raise UserError(
            f"{where}: seed {seed} is outside torch's 64-bit range [-2**63, 2**64 - 1]; use a smaller one"
        ) from None
    if used != seed:
        rank_zero_info(f"{where}: seed {seed} is used as {used}, the same generator (torch takes seeds modulo 2**64).")
    return used


def _read_table(source: str, split: str):
    """A 🤗 datasets table from a data file, a saved dataset folder, or a hub dataset name."""
    import datasets

    path = Path(source).expanduser()
    if is_table_file(path):
        return read_table_file(path, "data.prompts")
    if is_saved_dataset(path):
        table = read_saved_dataset(path, "data.prompts")
        if isinstance(table, datasets.DatasetDict) and split not in table:
            raise UserError(f"data.split: {source} has no split {split!r} (splits: {', '.join(table)}); choose one")
        return table[split] if isinstance(table, datasets.DatasetDict) else table
    if path.is_dir() and written_as_path(source):
        raise UserError(
            f"data.prompts: {source} is a folder but not a saved dataset (no dataset_info.json or state.json); "
            "give a .txt/.csv/.jsonl/.parquet file or a folder written by Dataset.save_to_disk"
        )
    if path.suffix or written_as_path(source):
        raise UserError(
            f"data.prompts: no prompt file at {source!r} (expected .txt, .csv, .tsv, .jsonl, .parquet, "
            "a saved dataset folder, or an inline list); check the path"
        )
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as err:  # datasets raises many kinds; the user needs one line
        raise UserError(
            f"data.prompts: could not load dataset {source!r} ({parser_error(err)}); check the name"
        ) from None


def prompt_column_of(columns: list[str], wanted: str | None, source: str) -> str:
    """The table's prompt column: `wanted`, else `prompt` or `prompts` (PartiPrompts, DrawBench), case-insensitively."""
    names = [wanted] if wanted else ["prompt", "prompts"]
    for name in names:
        found = [c for c in columns if c == name] or [c for c in columns if c.lower() == name.lower()]
        if found:
            return found[0]
    key = "data.prompt_column" if wanted else "data.prompts"
    raise UserError(
        f"{key}: {source!r} has no column {' or '.join(map(repr, names))} (columns: {', '.join(columns)}); "
        "name the prompt column with --data.prompt_column"
    )


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def seed_list(value: Any, index: int) -> list[int] | None:
    """A prompt row's `seeds` cell as a list of seeds: None when empty, else each checked by `used_seed`."""
    where = f"data.prompts: row {index}"
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        parts = [p for p in value.replace(",", " ").split() if p]
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise UserError(
                f'{where}: seeds {value!r} is not a list of whole numbers; write them like "1,5,9"'
            ) from None
    elif not isinstance(value, (list, tuple)):
        value = [value]
    if not value:
        return None
    return [used_seed(s, where) for s in value]


def images_each(lists: list[list[int] | None], images_per_prompt: int) -> int:
    """Images per prompt: `images_per_prompt`, or the length of the prompts' own seed lists, which must agree."""
    lengths = sorted({len(s) for s in lists if s is not None})
    if len(lengths) > 1:
        raise UserError(
            f"data.prompts: the seeds lists have different lengths {lengths}; "
            "give every prompt the same number of seeds"
        )
    if lengths and images_per_prompt not in (1, lengths[0]):
        raise UserError(
            f"data.images_per_prompt: {images_per_prompt}, but the prompts' seeds lists hold {lengths[0]} seeds each; "
            "leave data.images_per_prompt out (the lists set it) or make the two agree"
        )
    return lengths[0] if lengths else images_per_prompt


def read_rows(
    prompts: str | list[str],
    seed: int,
    negative_prompt: str = "",
    prompt_column: str | None = None,
    split: str = "train",
    images_per_prompt: int = 1,
) -> list[dict[str, Any]]:
    """Prompt rows `{index, prompt, negative_prompt, seed, …}`; a row without a seed gets `seed + index`.

    With `images_per_prompt` K > 1 each prompt becomes K rows (one per image) with consecutive indices
    and seeds: prompt p's image k is row `p·K + k`, seeded `seed + p·K + k`, or `s + k` when the prompt
    has its own seed s; the rows also carry `prompt_index` p and `sample` k (`image` names the file).
    A prompt with its own `seeds` list (`"1,5,9"`) gets one image per listed seed, and K is the
    lists' length (every list must have it; `images_per_prompt` must be 1 or agree).

    A table's other columns whose values are text, numbers or empty (PartiPrompts' `Category`,
    `Challenge`, `Note`; DrawBench's `Category`) are kept in the row under their own names.
    """
    from ldm_lightning.evaluation.geneval import is_metadata_file

    if isinstance(prompts, str) and is_metadata_file(prompts):
        # GenEval's own format: nested include/exclude clauses (which a table cannot hold) ride along
        # as JSON text; `tag` (the task) is a column to group by.
        from ldm_lightning.evaluation.geneval import read_metadata

        records = [
            {"prompt": m["prompt"], "tag": m["tag"], "geneval_metadata": json.dumps(m)} for m in read_metadata(prompts)
        ]
    elif isinstance(prompts, str) and Path(prompts).expanduser().suffix == ".txt":
        path = Path(prompts).expanduser()
        if not path.is_file():
            raise UserError(f"data.prompts: no prompt file at {prompts!r}; check the path")
        records = [{"prompt": line.strip()} for line in check_text_file(path).splitlines() if line.strip()]
    elif isinstance(prompts, str):
        table = _read_table(prompts, split)
        column = prompt_column_of(table.column_names, prompt_column, prompts)
        records = [dict(r, prompt=r[column]) for r in table]
        kept = (*ROW_KEYS, SEEDS_COLUMN)
        carried = [c for c in table.column_names if c not in (column, *kept) and all(_is_scalar(r[c]) for r in records)]
        records = [{**{c: r[c] for c in carried}, **{k: r[k] for k in kept if k in r}} for r in records]
    else:
        records = [{"prompt": p} for p in prompts]
    if not records:
        raise UserError(f"data.prompts: no prompts found in {prompts!r}; give at least one")
    lists = [seed_list(r.get(SEEDS_COLUMN), index) for index, r in enumerate(records)]
    images_per_prompt = images_each(lists, images_per_prompt)
    rows = []
    for index, (r, own_seeds) in enumerate(zip(records, lists)):
        if not isinstance(r["prompt"], str):
            raise UserError(f"data.prompts: row {index} has a prompt that is not text: {r['prompt']!r}; use text")
        row_seed = r.get("seed")
        negative = r.get("negative_prompt") or negative_prompt
        if not isinstance(negative, str):
            raise UserError(f"data.prompts: row {index} has a negative_prompt that is not text: {negative!r}; use text")
        if row_seed is not None and own_seeds is not None:
            raise UserError(f"data.prompts: row {index} has both a seed and a seeds list; give one of them")
        where = "data.seed" if row_seed is None else f"data.prompts: row {index}"
        own = None if row_seed is None else used_seed(row_seed, where)
        for image in range(images_per_prompt):
            row_index = index * images_per_prompt + image
            row = {
                **{k: v for k, v in r.items() if k not in (*ROW_KEYS, SEEDS_COLUMN)},
                "index": row_index,
                "prompt": r["prompt"],
                "negative_prompt": negative,
                "seed": own_seeds[image]
                if own_seeds is not None
                else used_seed(seed + row_index if own is None else own + image, where),
            }
            if images_per_prompt > 1:  # absent otherwise, so one-image runs keep their rows (and fingerprints)
                row.update(prompt_index=index, sample=image)
            rows.append(row)
    return rows


def check_group_by(rows: list[dict[str, Any]], group_by: list[str] | None) -> None:
    """Every `data.group_by` column must be in the prompt rows."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    missing = [c for c in group_by or [] if any(c not in r for r in rows)]
    if missing:
        raise UserError(
            f"data.group_by: no column {', '.join(map(repr, missing))} in the prompt rows "
            f"(columns: {', '.join(columns)}); group by one of those"
        )


class PromptRows(Dataset):
    """A list of prompt rows as a map-style dataset (`collate` makes batches of them)."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


class RankSlice(DistributedSampler):
    """Rows `rank, rank + world, …` of a dataset: every row on exactly one process, none repeated.

    Lightning's own distributed sampler for `test` pads the last batch with duplicates
    (Lightning#7929), which would score rows twice; being a `DistributedSampler`, this one is left in
    place under Lightning's defaults. A process that would get no row at all repeats row 0 instead:
    an idle process skips the epoch-end hooks in which the others wait for it. The repeat is the same
    image and counts once (results are kept by row index).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        n = len(dataset)
        self.indices = list(range(rank, n, num_replicas)) or ([0] if n else [])

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows -> one batch: a tensor of indices, and a list per column (prompts, seeds and the table's other
    columns; seeds stay ints: up to 2**64 - 1 they do not fit an int64 tensor)."""
    columns = dict.fromkeys(k for r in rows for k in r)
    return {k: torch.tensor([r[k] for r in rows]) if k == "index" else [r.get(k) for r in rows] for k in columns}


class PromptDataModule(LightningDataModule):
    """Prompts for `predict` and `test`, each row on exactly one process (`RankSlice`), with any Trainer.

    `rows` holds every prompt row after `setup` (or `load_rows()`); `skip_rows` leaves out rows that a
    run folder already holds, so a resumed run does only the rest.
    """

    def __init__(
        self,
        prompts: str | list[str] | None = None,
        batch_size: int = 4,
        seed: int = 0,
        negative_prompt: str = "",
        prompt_column: str | None = None,
        split: str = "train",
        limit: int | None = None,
        num_workers: int = 0,
        group_by: list[str] | None = None,
        reference: str | None = None,
        images_per_prompt: int = 1,
    ):
        """
        Args:
            prompts: inline list, or a .txt (one prompt per line), .csv/.tsv/.jsonl/.parquet file with a
                `prompt` or `prompts` column (any case; optional `negative_prompt`, `seed`, `seeds`; other columns
                are carried into manifest and results), a saved dataset folder or a hub dataset name.
                Default: example prompts for the embedded model.
            batch_size: prompts per batch (images do not depend on it).
            seed: base seed; a row without its own seed gets `seed + row index`.
            negative_prompt: negative prompt for rows that have none ("" = unconditional).
            prompt_column: column holding the prompt in table files (default: `prompt` or `prompts`, any case).
            split: split to read from a dataset with several.
            limit: use only the first N prompts.
            num_workers: DataLoader workers.
            group_by: columns of the prompt rows (e.g. `Category`) to summarise `test` results by, group by group.
            reference: real images for `test`'s distribution metrics (model.metrics fid, kid, cmmd,
                fd_dinov2, fd_clip): a folder (searched recursively for .png/.jpg/.webp), a glob, or a
                table (.csv/.jsonl/.parquet, saved dataset) whose `image` column holds paths relative
                to the table's folder.
            images_per_prompt: images per prompt (GenEval uses 4): each prompt becomes this many rows,
                seeded `seed, seed + 1, …` from the prompt's first seed; `limit` still counts prompts.
                A prompt table's `seeds` column ("1,5,9") lists each prompt's seeds instead and sets
                this number (leave it at 1 or give the same).
        """
        super().__init__()
        if batch_size < 1:
            raise UserError(f"data.batch_size: must be at least 1, got {batch_size}; try 4")
        if limit is not None and limit < 1:
            raise UserError(f"data.limit: must be at least 1, got {limit}; leave it out for all prompts")
        if num_workers < 0:
            raise UserError(
                f"data.num_workers: must be 0 or more, got {num_workers}; 0 reads prompts in the main process"
            )
        if images_per_prompt < 1:
            raise UserError(f"data.images_per_prompt: must be at least 1, got {images_per_prompt}; GenEval uses 4")
        used_seed(seed, "data.seed")
        self.save_hyperparameters()
        self.rows: list[dict[str, Any]] = []
        self.skip: set[int] = set()  # indices already finished in the output folder (resume)
        self.reference_files: list[Path] | None = None

    @property
    def group_by(self) -> list[str] | None:
        """Columns to summarise `test` results by (`PromptSource`)."""
        return self.hparams.group_by

    @property
    def reference(self) -> str | None:
        """The real images for set metrics, as given (`ReferenceSource`)."""
        return self.hparams.reference

    def load_rows(self) -> list[dict[str, Any]]:
        """All prompt rows, read once."""
        if not self.rows:
            hp = self.hparams
            source = EXAMPLE_PROMPTS if hp.prompts is None else hp.prompts
            k = hp.images_per_prompt
            rows = read_rows(source, hp.seed, hp.negative_prompt, hp.prompt_column, hp.split, images_per_prompt=k)
            if hp.limit:  # counts prompts, however many images each has
                rows = [r for r in rows if r.get("prompt_index", r["index"]) < hp.limit]
            check_group_by(rows, hp.group_by)
            self.rows = rows
        return self.rows

    def skip_rows(self, indices: set[int]) -> None:
        """Leave these row indices out of the next `predict`/`test` (they are finished)."""
        self.skip = set(indices)

    def setup(self, stage: str) -> None:
        self.load_rows()
        if stage == "test" and self.hparams.reference:
            from ldm_lightning.evaluation.real_images import list_reference

            self.reference_files = list_reference(self.hparams.reference)

    def _loader(self, stage: str) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        todo = [r for r in self.rows if r["index"] not in self.skip]
        if not todo and self.rows and stage == "test":
            # Everything is finished: one row again, so that `test` still reports the scores of all.
            todo = self.rows[:1]
        dataset = PromptRows(todo)
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=RankSlice(dataset, num_replicas=world, rank=rank),
            collate_fn=collate,
            num_workers=self.hparams.num_workers,
        )

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
