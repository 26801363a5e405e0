"""The GenEval-format scene suite: regenerated as committed, balanced, in the scene words, and satisfiable."""

import collections
import json
from pathlib import Path

import numpy as np
import torch

from ldm_lightning.evaluation.geneval import COLORS, TASKS, read_metadata
from ldm_lightning.evaluation.geneval import judge as geneval_judge
from ldm_lightning.shapes.geneval_detector import judge_colours, judge_detections
from ldm_lightning.shapes.scene import Claim, Group, realise, render_scene
from ldm_lightning.shapes.scene_caption import SCENE_VOCABULARY
from ldm_lightning.shapes.scene_suite import PROMPTS_PER_TASK, suite
from ldm_lightning.shapes.tokenizer import build_tokenizer

SUITE = Path(__file__).parents[1] / "configs" / "prompts" / "scenes-geneval.jsonl"
NUMBER_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}
RECORDS = read_metadata(SUITE)


def test_the_suite_file_is_the_suite() -> None:
    assert [json.loads(line) for line in SUITE.read_text().splitlines()] == suite() == RECORDS


def test_every_task_has_its_prompts_spread_over_its_strata() -> None:
    tags = collections.Counter(r["tag"] for r in RECORDS)
    assert tags == {t: PROMPTS_PER_TASK for t in TASKS}
    assert len({r["prompt"] for r in RECORDS}) == len(RECORDS)
    by_task = collections.defaultdict(collections.Counter)
    for r in RECORDS:
        by_task[r["tag"]][tuple(c["class"] for c in r["include"])] += 1
    assert set(by_task["single_object"].values()) == {40}  # five shapes, 40 prompts each
    assert set(by_task["color_attr"].values()) == {10}  # twenty ordered shape pairs
    assert set(by_task["two_object"].values()) == {10}
    assert set(by_task["position"].values()) == {10}
    counts = collections.Counter(
        (r["include"][0]["class"], r["include"][0]["count"]) for r in RECORDS if r["tag"] == "counting"
    )
    assert len(counts) == 15 and max(counts.values()) - min(counts.values()) <= 1
    colours = collections.Counter(r["include"][0]["color"] for r in RECORDS if r["tag"] == "colors")
    assert len(colours) == 6 and max(colours.values()) - min(colours.values()) <= 1
    relations = collections.Counter(r["include"][1]["position"][0] for r in RECORDS if r["tag"] == "position")
    assert set(relations.values()) == {PROMPTS_PER_TASK // 4}


def test_prompts_say_what_their_metadata_checks_in_the_scene_words() -> None:
    tokenizer = build_tokenizer(vocabulary=SCENE_VOCABULARY)
    for r in RECORDS:
        ids = tokenizer(r["prompt"]).input_ids
        assert tokenizer.unk_token_id not in ids and len(ids) <= tokenizer.model_max_length, r
        text = " " + r["prompt"].replace(",", " ") + " "
        for clause in r["include"]:
            noun = (
                clause["class"]
                if clause["count"] == 1
                else clause["class"] + ("es" if clause["class"][-1] == "s" else "s")
            )
            assert f" {noun} " in text and f" {NUMBER_WORDS[clause['count']]} " in text, r
            if "color" in clause:
                assert clause["color"] in COLORS and f" {clause['color']} {noun} " in text, r
            if "position" in clause:
                assert f" {clause['position'][0]} " in text, r
        for clause in r.get("exclude", []):
            assert r["tag"] != "single_object" and any(
                c["class"] == clause["class"] and c["count"] + 1 == clause["count"] for c in r["include"]
            ), r
    assert {r["include"][0].get("color") for r in RECORDS if r["tag"] == "colors"} <= set(COLORS) - {None}


def _claim(record) -> Claim:
    """The claim a record states, read back from its clauses (the relation's include comes second)."""
    groups = [Group(c["class"], c["count"], c.get("color")) for c in record["include"]]
    if record["tag"] == "position":
        return Claim((groups[1], groups[0]), record["include"][1]["position"][0])
    return Claim(tuple(groups))


def test_a_scene_drawn_for_each_prompt_passes_geneval_with_the_judge() -> None:
    rng = np.random.default_rng(0)
    for r in RECORDS[::3]:
        objects = realise(rng, _claim(r), "all")
        image = np.asarray(render_scene(objects))
        (detections,) = judge_detections(torch.from_numpy(image.copy()).permute(2, 0, 1)[None])
        verdict = geneval_judge(image, detections, r, judge_colours)
        assert verdict.correct, (r, verdict.reason)
