"""The GenEval metadata of a prompt row: what GenEval's rules (`geneval.py`, the `GenEval` metric) judge an image by.

A GenEval prompt file (`evaluation_metadata.jsonl`) carries, per prompt, its task and the objects it asks
for; the prompt data module keeps that as one JSON text column, which this reads back and checks.
"""

import json
from typing import Any

from ldm_lightning.errors import UserError
from ldm_lightning.evaluation.geneval import check_metadata

GENEVAL_COLUMN = "geneval_metadata"  # a prompt row's GenEval metadata, as JSON text


def row_metadata(row: dict[str, Any]) -> dict[str, Any]:
    """A prompt row's GenEval metadata, or a UserError when the prompts are not a GenEval metadata file."""
    text = row.get(GENEVAL_COLUMN)
    if not text:
        raise UserError(
            f"data.prompts: model.metrics geneval needs GenEval metadata per prompt; row {row['index']} has none; "
            "pass a GenEval evaluation_metadata.jsonl (lines with tag, include, exclude, prompt)"
        )
    return check_metadata(json.loads(text), f"data.prompts: row {row['index']}")
