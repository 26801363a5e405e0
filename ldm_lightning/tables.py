"""Tables on disk: .csv/.tsv/.jsonl/.json/.parquet files and saved 🤗 datasets, read with one-line errors.

Prompt files (`data.prompts`) and reference-image tables (`data.reference`) are both read here; `key`
names the config key a bad file belongs to.
"""

import csv
import json
from pathlib import Path

from ldm_lightning.errors import UserError, first_line

TABLE_FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def parser_error(err: BaseException) -> str:
    """The first line of the innermost cause: datasets wraps the parser's own error, which names the line."""
    while err.__cause__ is not None:
        err = err.__cause__
    return first_line(err)


def check_text_file(path: Path, key: str = "data.prompts") -> str:
    """The text of a prompt file, which must be UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(
            f"{key}: {path}: not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); save the file as UTF-8"
        ) from None


def check_jsonl(path: Path, key: str = "data.prompts") -> None:
    """Name the first line of a JSONL file that is not a JSON object."""
    for number, line in enumerate(check_text_file(path, key).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{key}: {path}, line {number}: not valid JSON ({err.msg}); fix that line") from None
        if not isinstance(value, dict):
            raise UserError(f"{key}: {path}, line {number}: expected a JSON object with a prompt; fix that line")


def is_table_file(path: Path) -> bool:
    return path.suffix in TABLE_FORMATS and path.is_file()


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in SAVED_DATASET_MARKERS)


def read_table_file(path: Path, key: str):
    """A .csv/.tsv/.jsonl/.parquet file as a 🤗 datasets table; a bad file is one line naming `key`."""
    import datasets

    # A TSV (PartiPrompts) is unquoted: a prompt may begin with a quotation mark and must stay as written.
    options = {"sep": "\t", "quoting": csv.QUOTE_NONE} if path.suffix == ".tsv" else {}
    check_text_file(path, key)
    if path.suffix == ".jsonl":
        check_jsonl(path, key)
    try:
        return datasets.load_dataset(TABLE_FORMATS[path.suffix], data_files=str(path), split="train", **options)
    except Exception as err:  # datasets wraps pandas/pyarrow errors in its own kinds
        raise UserError(
            f"{key}: {path}: could not be read as {path.suffix} ({parser_error(err)}); fix the file"
        ) from None


def read_saved_dataset(path: Path, key: str):
    """A folder written by `save_to_disk` (a Dataset or a DatasetDict); a bad one is one line naming `key`."""
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as err:
        raise UserError(f"{key}: {path}: not a readable saved dataset ({parser_error(err)}); save it again") from None
