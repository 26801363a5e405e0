"""Several images per prompt: K rows per prompt, consecutive seeds, each row on exactly one process, resumable."""

import pytest

from ldm_lightning.data import PromptDataModule, read_rows
from ldm_lightning.errors import UserError

PROMPTS = ["a red circle", "a yellow star", "a purple cross"]


def test_each_prompt_becomes_k_rows_with_consecutive_seeds():
    rows = read_rows(PROMPTS, seed=10, images_per_prompt=4)
    assert [r["index"] for r in rows] == list(range(12))
    assert [r["prompt"] for r in rows] == [p for p in PROMPTS for _ in range(4)]
    assert [r["seed"] for r in rows] == list(range(10, 22))  # prompt p, image k: 10 + 4p + k
    assert [(r["prompt_index"], r["sample"]) for r in rows[4:8]] == [(1, 0), (1, 1), (1, 2), (1, 3)]


def test_a_prompt_with_its_own_seed_counts_up_from_it(tmp_path):
    table = tmp_path / "p.csv"
    table.write_text("prompt,seed\na red circle,100\na yellow star,\n")
    rows = read_rows(str(table), seed=0, images_per_prompt=3)
    assert [r["seed"] for r in rows[:3]] == [100, 101, 102]
    assert [r["seed"] for r in rows[3:]] == [3, 4, 5]  # no seed of its own: data.seed + row index


def test_one_image_per_prompt_keeps_the_rows_unchanged():
    assert read_rows(PROMPTS, seed=5, images_per_prompt=1) == [
        {"index": i, "prompt": p, "negative_prompt": "", "seed": 5 + i} for i, p in enumerate(PROMPTS)
    ]


class _Trainer:
    def __init__(self, rank: int, world: int):
        self.global_rank, self.world_size = rank, world


def _indices(data: PromptDataModule, rank: int, world: int) -> list[int]:
    data.trainer = _Trainer(rank, world)
    return [int(i) for batch in data.test_dataloader() for i in batch["index"]]


def test_every_image_on_exactly_one_process_and_resume_does_the_rest():
    data = PromptDataModule(PROMPTS, batch_size=2, images_per_prompt=4, limit=2)
    data.setup("test")
    assert len(data.rows) == 8  # the limit counts prompts
    parts = [_indices(data, rank, 3) for rank in range(3)]
    assert sorted(i for part in parts for i in part) == list(range(8))
    data.skip_rows({0, 1, 2, 5})
    parts = [_indices(data, rank, 2) for rank in range(2)]
    assert sorted(i for part in parts for i in part) == [3, 4, 6, 7]


def test_images_per_prompt_must_be_positive():
    with pytest.raises(UserError, match=r"^data.images_per_prompt: must be at least 1, got 0"):
        PromptDataModule(PROMPTS, images_per_prompt=0)
