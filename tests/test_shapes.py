"""Procedural shapes data and the pixel judge: determinism, held-out split, captions, judge accuracy."""

import numpy as np
import pytest
import torch

from ldm_lightning.shapes.data import (
    COLOURS,
    HELD_OUT,
    SEEN_PAIRS,
    SHAPES,
    Shape,
    ShapesDataModule,
    ShapesDataset,
    caption,
    combos,
    matches,
    parse_caption,
    render,
    shape_at,
)
from ldm_lightning.shapes.judge import judge
from ldm_lightning.shapes.tokenizer import build_tokenizer


def test_items_are_deterministic_in_seed_and_index() -> None:
    a, b = ShapesDataset(10, seed=3, p_empty_caption=0.5), ShapesDataset(10, seed=3, p_empty_caption=0.5)
    for i in range(10):
        assert a[i]["prompt"] == b[i]["prompt"]
        assert torch.equal(a[i]["pixel_values"], b[i]["pixel_values"])
    assert [shape_at(i, seed=0) for i in range(20)] != [shape_at(i, seed=1) for i in range(20)]


def test_held_out_pairs_never_reach_training() -> None:
    train = {(s.colour, s.shape) for s in (shape_at(i, "train") for i in range(3000))}
    assert train == set(SEEN_PAIRS) and not train & HELD_OUT
    assert {(s.colour, s.shape) for s in (shape_at(i, "held_out") for i in range(200))} == HELD_OUT
    # every word is still trained: each colour and each shape appears in a seen pair
    assert {c for c, _ in SEEN_PAIRS} == set(COLOURS) and {s for _, s in SEEN_PAIRS} == set(SHAPES)
    assert len(combos("train")) == 300 and len(combos("held_out")) == 50


def test_captions_fit_the_tokenizer_and_name_true_attributes() -> None:
    tokenizer = build_tokenizer()
    rng = np.random.default_rng(0)
    shapes = [shape_at(i, "all") for i in range(2000)]
    texts = [caption(s, rng) for s in shapes] + [caption(s, "full") for s in shapes[:50]]
    texts += [caption(s, "short") for s in shapes[:50]]
    assert len(set(texts)) > 300  # varied phrasings really vary
    for text, shape in zip(texts, shapes + shapes[:50] * 2):
        ids = tokenizer(text).input_ids
        assert len(ids) <= tokenizer.model_max_length and tokenizer.unk_token_id not in ids, text
        assert matches(text, shape), text
    full = caption(Shape("star", "red", "large", "top"))
    assert full == "a large red star at the top"
    assert parse_caption(full) == {"colour": "red", "shape": "star", "size": "large", "position": "top"}
    assert caption(Shape("star", "red", "large", "top"), "short") == "a red star"


def test_judge_is_right_on_rendered_images() -> None:
    shapes = combos("train") + combos("held_out") + [shape_at(i, "all", seed=7) for i in range(100)]
    for shape in shapes:
        verdict = judge(render(shape))
        assert (verdict.colour, verdict.shape, verdict.size, verdict.position) == (
            shape.colour,
            shape.shape,
            shape.size,
            shape.position,
        ), shape
    assert judge(np.zeros((64, 64, 3), np.uint8)).shape == "none"


def test_judge_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        judge(np.zeros((64, 64), np.float32))


def test_datamodule_batches() -> None:
    dm = ShapesDataModule(batch_size=8, num_samples=32, seed=0, p_empty_caption=0.1)
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (8, 3, 64, 64) and len(batch["prompt"]) == 8
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    empty = sum(ShapesDataset(2000, p_empty_caption=0.1)[i]["prompt"] == "" for i in range(2000))
    assert 150 < empty < 250


def test_evaluation_columns_score_drawn_images() -> None:
    from ldm_lightning.evaluation.clip_score import load_clip
    from ldm_lightning.shapes.evaluate import accuracy, prompt_sets

    sets = prompt_sets(per_set=10, seed=0)
    clip = load_clip("tiny-clip")
    for name in ("seen full", "held-out reordered", "seen short"):
        prompts, shapes = zip(*sets[name])
        assert sorted(s.position for s in shapes) == sorted(["center", "top", "bottom", "left", "right"] * 2)
        drawn = torch.stack([torch.from_numpy(np.asarray(render(s))).permute(2, 0, 1) for s in shapes])
        moved = [Shape(s.shape, s.colour, s.size, "center" if s.position != "center" else "top") for s in shapes]
        elsewhere = torch.stack([torch.from_numpy(np.asarray(render(s))).permute(2, 0, 1) for s in moved])
        right, wrong = (
            accuracy(drawn, list(prompts), list(shapes), clip),
            accuracy(elsewhere, list(prompts), list(shapes), clip),
        )
        assert right["judge colour"] == right["judge position"] == wrong["judge colour"] == 1.0
        assert wrong["judge position"] == 0.0
        assert right["judge size"] == (None if name == "seen short" else 1.0)
