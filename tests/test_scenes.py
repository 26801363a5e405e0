"""The scene world and the pixel judge on it: every drawn object found, and GenEval's rules agreeing.

The ground truth is each scene's own list of drawn objects: every object is rendered alone to get its
pixels and box, independently of the judge's connected components.
"""

import collections
import dataclasses

import numpy as np
import torch
from scipy import ndimage

from ldm_lightning.evaluation.geneval import judge as geneval_judge
from ldm_lightning.evaluation.geneval_models import load_colour_classifier, load_detector
from ldm_lightning.shapes.data import HELD_OUT, SEEN_PAIRS, shape_at
from ldm_lightning.shapes.judge import find_objects, judge
from ldm_lightning.shapes.scene import (
    CANVAS_PX,
    CONVERSE,
    KIND_SHARES,
    MIN_GAP,
    Claim,
    Group,
    render_scene,
    scene_at,
    single_scene,
)
from ldm_lightning.shapes.scene_caption import NUMBERS, SCENE_VOCABULARY, describe, geneval_record, plural, varied
from ldm_lightning.shapes.tokenizer import build_tokenizer

N_SCENES = 2000
SCENES = [scene_at(i, "all", seed=5) for i in range(N_SCENES)]


def _pixels(objects) -> np.ndarray:
    return np.asarray(render_scene(tuple(objects)))


def _own_mask(obj) -> np.ndarray:
    """The pixels ``obj`` covers when drawn alone."""
    return _pixels([obj]).max(axis=2) > 0


def _box(mask: np.ndarray) -> tuple[float, ...]:
    rows, cols = np.nonzero(mask)
    return (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)


def test_scenes_are_deterministic_and_keep_held_out_pairs_out_of_training() -> None:
    assert [scene_at(i, seed=3) for i in range(50)] == [scene_at(i, seed=3) for i in range(50)]
    assert [scene_at(i, seed=3) for i in range(50)] != [scene_at(i, seed=4) for i in range(50)]
    assert np.array_equal(_pixels(SCENES[7].objects), _pixels(scene_at(7, "all", seed=5).objects))
    train = [scene_at(i) for i in range(1500)]
    pairs = {(o.colour, o.shape) for s in train for o in s.objects}
    assert pairs == set(SEEN_PAIRS) and not pairs & HELD_OUT
    held = {(o.colour, o.shape) for s in (scene_at(i, "held_out") for i in range(300)) for o in s.objects}
    assert held == HELD_OUT


def test_kinds_counts_and_spacing() -> None:
    kinds = collections.Counter(s.claim.kind for s in SCENES)
    for kind, share in KIND_SHARES.items():  # binomial sd at n = 2000 is at most 0.011
        assert abs(kinds[kind] / N_SCENES - share) < 0.04, kinds
    assert {len(s.objects) for s in SCENES} == {1, 2, 3, 4}
    assert {g.count for s in SCENES for g in s.claim.groups if s.claim.kind == "counting"} == {2, 3, 4}
    for scene in SCENES[:400]:
        assert len(scene.objects) == sum(g.count for g in scene.claim.groups)
        masks = [_own_mask(o) for o in scene.objects]
        for i, a in enumerate(masks):
            assert a.any() and not (a[0].any() or a[-1].any() or a[:, 0].any() or a[:, -1].any())
            # No other object's pixels within MIN_GAP - 2 px (boxes keep MIN_GAP; shapes sit inside them).
            near = ndimage.binary_dilation(a, np.ones((3, 3), bool), iterations=MIN_GAP - 2)
            assert not any((near & b).any() for b in masks[i + 1 :]), scene


def test_relations_hold_between_drawn_pixels() -> None:
    positioned = [s for s in SCENES if s.claim.kind == "position"]
    assert {s.claim.relation for s in positioned} == set(CONVERSE)
    for scene in positioned:
        (ya, xa), (yb, xb) = (ndimage.center_of_mass(_own_mask(o)) for o in scene.objects)
        dx, dy = xa - xb, ya - yb
        expected = {"left of": -dx, "right of": dx, "above": -dy, "below": dy}[scene.claim.relation]
        assert expected > 2 * max(abs(dx), abs(dy)) / 3, scene  # the named axis dominates, in the named sense


def test_single_shape_items_keep_their_attributes_on_the_canvas() -> None:
    singles = [s for s in SCENES if s.claim.kind == "single"]
    assert all(s.claim.place is not None and len(s.objects) == 1 for s in singles)
    for shape in [shape_at(i, "all", seed=11) for i in range(200)]:
        verdict = judge(_pixels(single_scene(shape).objects))
        assert (verdict.colour, verdict.shape, verdict.size, verdict.position) == (
            shape.colour,
            shape.shape,
            shape.size,
            shape.position,
        ), shape
        assert describe(single_scene(shape).claim) == f"a {shape.size} {shape.colour} {shape.shape} " + {
            "center": "in the center", "top": "at the top", "bottom": "at the bottom",
            "left": "on the left", "right": "on the right",
        }[shape.position]  # fmt: skip


def test_judge_finds_every_drawn_object() -> None:
    found_right = total = 0
    for scene in SCENES:
        image = _pixels(scene.objects)
        assert image.shape == (CANVAS_PX, CANVAS_PX, 3)
        found = find_objects(image)
        assert len(found) == len(scene.objects), scene
        unmatched = list(found)
        for obj in scene.objects:
            own = _own_mask(obj)
            match = max(unmatched, key=lambda f: (f.mask & own).sum())
            unmatched.remove(match)
            total += 1
            box_error = max(abs(a - b) for a, b in zip(match.box, _box(own)))
            found_right += (match.shape, match.colour, match.size) == (obj.shape, obj.colour, obj.size)
            assert box_error <= 1, (scene, match.box, _box(own))
    assert found_right == total, f"{found_right}/{total} objects with the drawn shape, colour and size"


# The detector and colour classifier as `--model.metrics.detector shapes-judge` loads them.
DETECT, COLOURS = load_detector("shapes-judge"), load_colour_classifier("shapes-judge")


def _geneval(scene):
    """GenEval's verdict on the scene's image for a claim's metadata, the image detected once."""
    image = _pixels(scene.objects)
    (detections,) = DETECT(torch.from_numpy(image.copy()).permute(2, 0, 1)[None])
    # The rules read the clauses only; a prompt is not needed ("five" has no caption word).
    return lambda claim: geneval_judge(image, detections, geneval_record(claim, prompt=""), COLOURS).correct


def _with_count(claim: Claim, count: int) -> Claim:
    return dataclasses.replace(claim, groups=(dataclasses.replace(claim.groups[0], count=count), *claim.groups[1:]))


def test_geneval_rules_on_the_judge_accept_true_captions_and_reject_false_ones() -> None:
    checked = collections.Counter()
    for scene in SCENES:
        claim = scene.claim
        if geneval_record(claim) is None:  # names cyan, which GenEval's colours lack
            continue
        verdict = _geneval(scene)
        assert verdict(claim), (describe(claim), scene)
        checked[claim.kind] += 1
        first = claim.groups[0]
        if claim.kind == "counting":
            for wrong in {2, 3, 4, 5} - {first.count}:
                assert not verdict(_with_count(claim, wrong)), (describe(claim), wrong)
        if claim.relation is not None:
            assert not verdict(dataclasses.replace(claim, relation=CONVERSE[claim.relation]))
            b_then_a = dataclasses.replace(claim, groups=claim.groups[::-1])  # "B left of A" for "A left of B"
            assert not verdict(b_then_a)
        if claim.kind == "two_object" and claim.groups[0].colour != claim.groups[1].colour:
            a, b = claim.groups
            swapped = Claim((dataclasses.replace(a, colour=b.colour), dataclasses.replace(b, colour=a.colour)))
            if a.colour is not None and b.colour is not None:
                assert not verdict(swapped), describe(claim)
                checked["swapped colours"] += 1
        if claim.kind == "single":
            other = next(s for s in ("circle", "square", "triangle", "star", "cross") if s != first.shape)
            assert not verdict(Claim((dataclasses.replace(first, shape=other),)))
    assert min(checked.values()) >= 100, checked


def test_varied_captions_fit_the_scene_tokenizer_and_say_only_what_is_drawn() -> None:
    tokenizer = build_tokenizer(vocabulary=SCENE_VOCABULARY)
    rng = np.random.default_rng(0)
    texts = set()
    for scene in SCENES:
        for text in (describe(scene.claim), varied(scene.claim, rng)):
            texts.add(text)
            ids = tokenizer(text).input_ids
            assert len(ids) <= tokenizer.model_max_length and tokenizer.unk_token_id not in ids, text
            words = text.replace(",", " ").split()
            drawn = collections.Counter(o.shape for o in scene.objects)
            for shape, count in drawn.items():
                if count == 1:
                    assert shape in words, (text, scene)
                else:
                    assert f"{NUMBERS[count]} " in text and plural(shape) in words, (text, scene)
            for colour in {"red", "green", "blue", "yellow", "purple", "cyan", "white"} & set(words):
                assert colour in {o.colour for o in scene.objects}, (text, scene)
    assert len(texts) > 1500
    assert describe(Claim((Group("circle", 1, "red"), Group("triangle", 1, "yellow")))) == (
        "a red circle and a yellow triangle"
    )
    assert describe(Claim((Group("cross", 1, "cyan"), Group("circle", 1, "purple")), "above")) == (
        "a cyan cross above a purple circle"
    )
    assert describe(Claim((Group("star", 3),))) == "three stars"
