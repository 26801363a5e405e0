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


# ----- a prompt's own seed list -----


def test_a_seeds_column_lists_each_prompts_seeds(tmp_path):
    table = tmp_path / "p.csv"
    table.write_text('prompt,seeds\na red circle,"1,5,9"\na yellow star,\n')
    rows = read_rows(str(table), seed=100)
    assert [(r["prompt_index"], r["sample"], r["seed"]) for r in rows] == [
        (0, 0, 1),
        (0, 1, 5),
        (0, 2, 9),
        (1, 0, 103),
        (1, 1, 104),
        (1, 2, 105),
    ]  # fmt: skip  (K = 3 from the list; a prompt without one counts up from data.seed + row index)
    assert all("seeds" not in r for r in rows)
    lines = tmp_path / "p.jsonl"
    lines.write_text('{"prompt": "a red circle", "seeds": [7, 3]}\n{"prompt": "a yellow star", "seeds": [0, 2]}\n')
    assert [r["seed"] for r in read_rows(str(lines), seed=0, images_per_prompt=2)] == [7, 3, 0, 2]


def test_seed_lists_that_disagree_are_refused(tmp_path):
    table = tmp_path / "p.csv"
    table.write_text('prompt,seeds\na red circle,"1,5,9"\na yellow star,"2,4"\n')
    with pytest.raises(UserError, match=r"^data.prompts: the seeds lists have different lengths \[2, 3\]"):
        read_rows(str(table), seed=0)
    table.write_text('prompt,seeds\na red circle,"1,5,9"\n')
    with pytest.raises(UserError, match=r"^data.images_per_prompt: 4, but the prompts' seeds lists hold 3 seeds"):
        read_rows(str(table), seed=0, images_per_prompt=4)
    table.write_text('prompt,seed,seeds\na red circle,3,"1,5,9"\n')
    with pytest.raises(UserError, match=r"^data.prompts: row 0 has both a seed and a seeds list"):
        read_rows(str(table), seed=0)
    table.write_text("prompt,seeds\na red circle,1;x\n")
    with pytest.raises(UserError, match=r"^data.prompts: row 0: seeds '1;x' is not a list of whole numbers"):
        read_rows(str(table), seed=0)


def test_limit_counts_prompts_with_seed_lists(tmp_path):
    table = tmp_path / "p.csv"
    table.write_text('prompt,seeds\na red circle,"1,5,9"\na yellow star,"2,4,6"\n')
    data = PromptDataModule(str(table), limit=1)
    data.setup("test")
    assert [r["seed"] for r in data.rows] == [1, 5, 9]


# ----- averages per prompt -----


def test_per_prompt_average_and_interval_resample_prompts():
    import numpy as np

    from ldm_lightning.evaluation.groups import group_summary
    from ldm_lightning.evaluation.summary import bootstrap_ci, summarize_per_prompt

    scores = {0: [10.0, 20.0, 30.0], 1: [40.0, None, 44.0], 2: [None, None, None], 3: [1.0, 2.0, 6.0]}
    rows = [
        {"index": 3 * p + k, "prompt_index": p, "sample": k, "clip_score": s, "tag": "a" if p < 2 else "b"}
        for p, values in scores.items()
        for k, s in enumerate(values)
    ]
    by_hand = np.array([20.0, 42.0, 3.0])  # prompt 2 has no scored image and is left out
    got = summarize_per_prompt(rows, "clip_score")
    assert got["clip_score_prompt_mean"] == pytest.approx(65.0 / 3) and got["clip_score_prompt_n"] == 3
    assert got["clip_score_prompt_std"] == pytest.approx(np.std(by_hand, ddof=1))
    assert got["clip_score_prompt_ci95"] == list(bootstrap_ci(by_hand))
    per_image = np.array([10, 20, 30, 40, 44, 1, 2, 6], dtype=float)
    assert got["clip_score_prompt_mean"] != pytest.approx(per_image.mean())  # 21.67 per prompt, 19.125 per image
    groups = group_summary(rows, ["tag"])["tag"]
    assert groups["a"]["clip_score_per_prompt"]["mean"] == pytest.approx(31.0)
    assert groups["a"]["clip_score_per_prompt"]["n"] == 2 and groups["a"]["clip_score"]["n"] == 5
    assert groups["b"]["clip_score_per_prompt"]["n"] == 1 and groups["b"]["clip_score_per_prompt"]["mean"] == 3.0
