"""GenEval's rules on scenes drawn here (rectangles and discs at known places), with a detector that knows them.

Each test states the answer GenEval's rules give for its scene; the detections carry the drawn boxes
and masks, and the colour classifier reads the drawn colour back from the object's grey-padded crop.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ldm_lightning.errors import UserError
from ldm_lightning.evaluation.geneval import (
    BACKGROUND,
    Detection,
    judge,
    object_crops,
    read_metadata,
    relative_position,
    summarize_geneval,
)

RGB = {"red": (220, 30, 30), "green": (30, 180, 50), "blue": (30, 60, 230), "yellow": (235, 220, 40)}
SIZE = 96


def draw(*objects, background=(20, 20, 20)):
    """Objects (label, colour, "rect" | "disc", box, score) painted in order; their detections with exact masks."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8) + np.array(background, np.uint8)
    y, x = np.mgrid[:SIZE, :SIZE] + 0.5
    detections = []
    for label, colour, kind, (x0, y0, x1, y1), score in objects:
        if kind == "rect":
            mask = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
        else:
            mask = ((x - (x0 + x1) / 2) / ((x1 - x0) / 2)) ** 2 + ((y - (y0 + y1) / 2) / ((y1 - y0) / 2)) ** 2 <= 1
        image[mask] = RGB[colour]
        detections.append(Detection(label, score, (x0, y0, x1, y1), mask))
    return image, detections


def drawn_colours(image, objects, name):
    """Colour classifier for drawn scenes: the nearest drawn colour to the crop's commonest non-grey pixel."""
    found = []
    for crop in object_crops(image, objects):
        pixels = np.asarray(crop).reshape(-1, 3)
        pixels = pixels[(pixels != BACKGROUND).any(axis=1)]
        values, counts = np.unique(pixels, axis=0, return_counts=True)
        common = values[counts.argmax()].astype(int)
        found.append(min(RGB, key=lambda c: sum((common - RGB[c]) ** 2)))
    return found


def verdict(metadata, *objects, **kwargs):
    image, detections = draw(*objects, **kwargs)
    return judge(image, detections, metadata, drawn_colours)


def one(name, tag="single_object", **extra):
    return {"tag": tag, "include": [{"class": name, "count": 1, **extra}], "prompt": f"a photo of a {name}"}


def test_crop_is_the_box_with_grey_outside_the_mask():
    image, (disc,) = draw(("dog", "red", "disc", (10, 20, 50, 60), 0.9), background=(30, 180, 50))
    (crop,) = object_crops(image, [disc])
    crop = np.asarray(crop)
    assert crop.shape == (40, 40, 3)
    assert tuple(crop[0, 0]) == BACKGROUND and tuple(crop[-1, -1]) == BACKGROUND  # corners lie outside the disc
    assert tuple(crop[20, 20]) == RGB["red"]
    (whole,) = object_crops(image, [Detection("dog", 0.9, disc.box)])  # no mask: the box as it is
    assert tuple(np.asarray(whole)[0, 0]) == (30, 180, 50)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # Centres 5 and 17: offset -12, margin 0.1 * (10 + 10) = 2, so -10 / 12 = -0.83 on x.
        ((0, 0, 10, 10), (12, 0, 22, 10), {"left of"}),
        ((12, 0, 22, 10), (0, 0, 10, 10), {"right of"}),
        ((0, 30, 10, 40), (0, 0, 10, 10), {"below"}),
        # Offset (-10, -10) shrinks to (-8, -8): -8 / 14.14 = -0.57 on both axes.
        ((0, 0, 10, 10), (10, 10, 20, 20), {"left of", "above"}),
        # Boxes overlapping by 2 px: offset -8 shrinks to -6, -6 / 8 = -0.75 on x: still "left of".
        ((0, 0, 10, 10), (8, 0, 18, 10), {"left of"}),
        # Offset (-1, 0) is within the margin: no relation.
        ((0, 0, 10, 10), (1, 0, 11, 10), set()),
        # Offset (-10, -4) shrinks to (-8, -2): x carries -8 / 10.77 = -0.74, y only -0.19.
        ((0, 0, 10, 10), (10, 4, 20, 14), {"left of"}),
    ],
)
def test_relative_position_from_box_centres_with_margin(a, b, expected):
    assert relative_position(Detection("a", 1, a), Detection("b", 1, b)) == expected


def test_confidence_must_exceed_point_three():
    assert verdict(one("dog"), ("dog", "red", "rect", (10, 10, 40, 40), 0.31)).correct
    result = verdict(one("dog"), ("dog", "red", "rect", (10, 10, 40, 40), 0.3))
    assert not result.correct and result.reason == "expected dog>=1, found 0"
    assert not verdict(one("dog"), ("cat", "red", "rect", (10, 10, 40, 40), 0.99)).correct


def cats(scores):
    return [("cat", "blue", "disc", (4 + 22 * i, 30, 20 + 22 * i, 46), s) for i, s in enumerate(scores)]


COUNT_3 = {
    "tag": "counting",
    "include": [{"class": "cat", "count": 3}],
    "exclude": [{"class": "cat", "count": 4}],
    "prompt": "a photo of three cats",
}


def test_counting_is_exact_at_point_nine():
    assert verdict(COUNT_3, *cats([0.95, 0.95, 0.92])).correct
    four = verdict(COUNT_3, *cats([0.95, 0.95, 0.92, 0.91]))
    assert not four.correct and four.reasons == ("expected cat<4, found 4",)
    # A fourth cat below 0.9 is not seen; a third below 0.9 is missing.
    assert verdict(COUNT_3, *cats([0.95, 0.95, 0.92, 0.85])).correct
    low = verdict(COUNT_3, *cats([0.95, 0.95, 0.85]))
    assert not low.correct and low.reasons == ("expected cat>=3, found 2",)
    # Outside the counting task the same 0.85 is confident enough.
    assert verdict({**COUNT_3, "tag": "two_object"}, *cats([0.95, 0.95, 0.85])).correct


def test_at_most_sixteen_objects_per_class():
    many = [("donut", "yellow", "rect", (1 + 5 * i, 1 + 5 * i, 4 + 5 * i, 4 + 5 * i), 0.5 + i / 100) for i in range(18)]
    need_17 = {"tag": "two_object", "include": [{"class": "donut", "count": 17}], "prompt": "donuts"}
    assert verdict(need_17, *many).reasons == ("expected donut>=17, found 16",)
    not_17 = {"tag": "two_object", "include": [], "exclude": [{"class": "donut", "count": 17}], "prompt": "donuts"}
    assert verdict(not_17, *many).correct


def test_two_objects_and_exclusion():
    meta = {
        "tag": "two_object",
        "include": [{"class": "dog", "count": 1}, {"class": "bench", "count": 1}],
        "exclude": [{"class": "cat", "count": 1}],
        "prompt": "a photo of a dog and a bench",
    }
    dog, bench = ("dog", "red", "rect", (5, 5, 30, 30), 0.8), ("bench", "blue", "rect", (50, 50, 90, 70), 0.6)
    assert verdict(meta, dog, bench).correct
    assert verdict(meta, dog).reasons == ("expected bench>=1, found 0",)
    assert verdict(meta, dog, bench, ("cat", "green", "disc", (40, 5, 60, 25), 0.4)).reasons == (
        "expected cat<1, found 1",
    )


def test_colour_of_the_most_confident_objects():
    red_car = ("car", "red", "disc", (10, 10, 50, 50), 0.9)
    assert verdict(one("car", "colors", color="red"), red_car).correct
    wrong = verdict(one("car", "colors", color="blue"), red_car)
    assert not wrong.correct and wrong.reason == "expected blue car>=1, found 1 red"
    # Only the most confident car is judged: a blue one behind it does not help.
    blue_car = ("car", "blue", "rect", (60, 60, 90, 90), 0.5)
    assert not verdict(one("car", "colors", color="blue"), red_car, blue_car).correct
    # A loose box around a small red disc on a green square: the crop is mostly green, but the
    # pixels outside the disc's mask are painted grey, so the classifier sees red.
    image, (_, small) = draw(
        ("bench", "green", "rect", (0, 0, 60, 60), 0.9), ("car", "red", "disc", (25, 25, 35, 35), 0.9)
    )
    loose = Detection("car", 0.9, (0, 0, 60, 60), small.mask)
    assert judge(image, [loose], one("car", "colors", color="red"), drawn_colours).correct
    unmasked = Detection("car", 0.9, (0, 0, 60, 60))
    assert judge(image, [unmasked], one("car", "colors", color="red"), drawn_colours).reason.endswith("1 green")


def test_position_relative_to_an_earlier_object():
    meta = {
        "tag": "position",
        "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}],
        "prompt": "a photo of a dog right of a cat",
    }
    cat = ("cat", "blue", "rect", (5, 40, 25, 60), 0.9)
    assert verdict(meta, cat, ("dog", "red", "rect", (60, 40, 80, 60), 0.9)).correct
    above = verdict(meta, cat, ("dog", "red", "rect", (5, 0, 25, 20), 0.9))
    assert not above.correct and above.reason == "expected dog right of target, found above"
    close = verdict(meta, cat, ("dog", "red", "rect", (7, 42, 27, 62), 0.9))  # overlapping: no relation
    assert close.reason == "expected dog right of target, found "
    alone = verdict(meta, ("dog", "red", "rect", (60, 40, 80, 60), 0.9))
    assert alone.reasons == ("expected cat>=1, found 0", "no target for dog to be right of")


def test_colour_attribution_of_two_objects():
    meta = {
        "tag": "color_attr",
        "include": [{"class": "car", "count": 1, "color": "red"}, {"class": "bench", "count": 1, "color": "blue"}],
        "prompt": "a photo of a red car and a blue bench",
    }
    car, bench = ("car", "red", "disc", (5, 5, 35, 35), 0.9), ("bench", "blue", "rect", (50, 50, 90, 80), 0.9)
    assert verdict(meta, car, bench).correct
    swapped = verdict(
        meta, ("car", "blue", "disc", (5, 5, 35, 35), 0.9), ("bench", "red", "rect", (50, 50, 90, 80), 0.9)
    )
    assert swapped.reasons == ("expected red car>=1, found 1 blue", "expected blue bench>=1, found 1 red")


def test_summary_is_the_mean_of_task_accuracies():
    rows = [{"tag": "single_object", "geneval": c} for c in (True, True, True, False)]
    rows += [{"tag": "counting", "geneval": c} for c in (True, False)]
    rows += [{"tag": "position", "geneval": None}]  # left out (a broken image): no task
    summary = summarize_geneval(rows)
    assert summary["geneval_tasks"]["single_object"]["accuracy"] == 0.75
    assert summary["geneval_tasks"]["counting"] == {"accuracy": 0.5, "ci95": [0.0, 1.0], "n": 2, "n_prompts": 2}
    assert summary["geneval_overall"] == pytest.approx((0.75 + 0.5) / 2)
    low, high = summary["geneval_overall_ci95"]
    assert 0.0 <= low <= 0.625 <= high <= 1.0
    assert summary["geneval_missing_tasks"] == ["two_object", "colors", "position", "color_attr"]


def test_intervals_resample_prompts_with_all_their_images():
    # Two prompts of four images: one always right, one always wrong. Resampling the two prompts gives an
    # accuracy of 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so the 95% percentile interval is [0, 1].
    # Resampling the eight images as if independent would give about [0.125, 0.875].
    rows = [{"tag": "colors", "prompt_index": p, "geneval": p == 0} for p in (0, 1) for _ in range(4)]
    summary = summarize_geneval(rows)
    assert summary["geneval_tasks"]["colors"] == {"accuracy": 0.5, "ci95": [0.0, 1.0], "n": 8, "n_prompts": 2}
    assert summary["geneval_overall_ci95"] == [0.0, 1.0]
    # Stratified by task: with a second task whose prompts all agree, the overall interval is the first
    # task's, halved and shifted by the second's accuracy ((0, 1/2 or 1) + 1) / 2: [0.5, 1].
    rows += [{"tag": "counting", "prompt_index": p, "geneval": True} for p in (2, 3) for _ in range(4)]
    assert summarize_geneval(rows)["geneval_overall_ci95"] == [0.5, 1.0]


def test_metadata_file(tmp_path):
    records = [
        one("dog"),
        {
            "tag": "position",
            "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["above", 0]}],
            "prompt": "p",
        },
    ]
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert read_metadata(path) == records
    path.write_text(json.dumps({**one("dog"), "tag": "counts"}) + "\n")
    with pytest.raises(UserError, match=r"line 1: tag 'counts' is not a GenEval task"):
        read_metadata(path)
    path.write_text(json.dumps(one("dog", color="teal")) + "\n")
    with pytest.raises(UserError, match="colour 'teal'"):
        read_metadata(path)


# ----- the networks: CLIP colours, Mask2Former plumbing, the embedded judge -----


def test_clip_colour_classifier_averages_templates(tiny_clip):
    from transformers import CLIPModel, CLIPTokenizer

    from ldm_lightning.evaluation.geneval_models import COLORS, COLOUR_TEMPLATES, load_colour_classifier

    classify = load_colour_classifier(tiny_clip)
    image, objects = draw(("car", "red", "rect", (8, 8, 40, 40), 0.9), ("car", "green", "disc", (50, 50, 82, 82), 0.8))
    got = classify(image, objects, "car")
    model, tokenizer = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPTokenizer.from_pretrained(tiny_clip)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    with torch.no_grad():
        weights = []
        for c in COLORS:
            texts = [t.format(c=c, name="car") for t in COLOUR_TEMPLATES]
            ids = [torch.tensor([tokenizer(t)["input_ids"]]) for t in texts]
            emb = torch.cat([model.text_projection(model.text_model(input_ids=i).pooler_output) for i in ids])
            weights.append(torch.nn.functional.normalize(torch.nn.functional.normalize(emb, dim=-1).mean(0), dim=0))
        expected = []
        for crop in object_crops(image, objects):  # 32×32 crops: the tiny CLIP's input size, no resize
            pixels = (torch.from_numpy(np.array(crop)).permute(2, 0, 1).float() / 255 - mean) / std
            feature = model.visual_projection(model.vision_model(pixel_values=pixels[None]).pooler_output)
            expected.append(
                COLORS[int((torch.nn.functional.normalize(feature, dim=-1) @ torch.stack(weights).T).argmax())]
            )
    assert got == expected
    torch.testing.assert_close(classify.classifier("car"), torch.stack(weights), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_mask2former(tmp_path_factory) -> str:
    from ldm_lightning.testing import build_tiny_mask2former

    return str(build_tiny_mask2former(tmp_path_factory.mktemp("mask2former")))


def test_mask2former_detections_feed_the_rules(tiny_mask2former):
    from ldm_lightning.evaluation.geneval_models import COCO_NAMES, load_detector

    detect = load_detector(tiny_mask2former)
    torch.manual_seed(4)
    images = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    found = detect(images)
    assert len(found) == 2 and all(0 < len(d) <= 10 * 80 for d in found)
    for det in found[0]:
        assert det.label in COCO_NAMES and 0.0 <= det.score <= 1.0 and det.mask.shape == (48, 48)
        rows, cols = np.nonzero(det.mask)
        assert det.box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    image = images[0].permute(1, 2, 0).numpy()
    top = max(found[0], key=lambda d: d.score)
    assert judge(image, found[0], one(top.label, color="red"), drawn_colours).correct in (True, False)
    assert judge(image, found[0], one(top.label), drawn_colours).correct == (top.score > 0.3)


def test_geneval_detector_input_size_is_mmdets():
    from ldm_lightning.evaluation.geneval_models import detector_input_size

    # mmcv's rescale_size for (1333, 800): factor min(1333 / long, 800 / short), sides rounded half up.
    assert detector_input_size(512, 512) == (800, 800)  # factor 1.5625
    assert detector_input_size(512, 768) == (800, 1200)
    assert detector_input_size(256, 1024) == (333, 1333)  # the long side binds: 1333 / 1024 = 1.3018
    assert detector_input_size(1024, 1024) == (800, 800)


def _mmdet_input(image: np.ndarray) -> torch.Tensor:
    """GenEval's mmdet test pipeline on one H×W×3 uint8 RGB image, written from mmcv/mmdet 2.x: `rescale_size`
    for (1333, 800), bilinear resize to uint8 (PIL's BILINEAR when enlarging samples as cv2's INTER_LINEAR
    does, to a rounding), `Normalize` (mmdet's ImageNet mean and std in 0..255), `Pad(size_divisor=32)`."""
    height, width = image.shape[:2]
    factor = min(1333 / max(height, width), 800 / min(height, width))
    new_w, new_h = int(width * factor + 0.5), int(height * factor + 0.5)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR), dtype=np.float32)
    normed = (resized - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    padded = np.pad(normed, ((0, -new_h % 32), (0, -new_w % 32), (0, 0)))
    return torch.from_numpy(padded).permute(2, 0, 1).float()


def test_mask2former_sees_images_at_genevals_size_and_cuts_the_padding_off_its_masks(tiny_mask2former):
    from ldm_lightning.evaluation.geneval_models import load_detector

    detect = load_detector(tiny_mask2former)
    seen = []
    detect.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["pixel_values"]), with_kwargs=True
    )
    torch.manual_seed(6)
    images = torch.randint(0, 256, (1, 3, 32, 64), dtype=torch.uint8)
    (found,) = detect(images)
    (pixels,) = seen
    # 32×64 is enlarged by 1333 / 64 to 667×1333 and padded to 672×1344 (the processor's own size would be 64).
    assert pixels.shape == (1, 3, 672, 1344)
    expected = _mmdet_input(images[0].permute(1, 2, 0).numpy())
    assert (pixels[0] - expected).abs().max() <= 1.01 / 57.12  # one 8-bit level of rounding between resizers
    assert torch.equal(pixels[0, :, 667:], torch.zeros(3, 5, 1344)) and torch.equal(
        pixels[0, :, :, 1333:], torch.zeros(3, 672, 11)
    )

    # Masks as mmdet's test: logits to the padded size, the padding cut off, then to the image's size; binary at 0.
    with torch.no_grad():
        out = detect.model(pixel_values=pixels)
    probs = out.class_queries_logits[0].softmax(-1)[:, :-1]
    scores, flat = probs.flatten().topk(min(100, probs.numel()))
    logits = F.interpolate(out.masks_queries_logits[0][flat // 80][None], size=(672, 1344), mode="bilinear")
    logits = F.interpolate(logits[..., :667, :1333], size=(32, 64), mode="bilinear")[0]
    masks = [m for m in (logits > 0).numpy() if m.any()]
    assert len(found) == len(masks) and all(np.array_equal(d.mask, m) for d, m in zip(found, masks))

    from ldm_lightning.evaluation.geneval_models import detector_input

    assert detector_input(detect, 32, 64) == "667x1333" and detector_input(detect, 512, 512) == "800x800"


def test_shapes_judge_as_detector():
    from ldm_lightning.evaluation.geneval_models import load_colour_classifier, load_detector
    from ldm_lightning.shapes.data import Shape, render

    left = np.asarray(render(Shape("circle", "red", "large", "left")))
    right = np.asarray(render(Shape("square", "blue", "large", "right")))
    scene = np.maximum(left, right)
    detect, colours = load_detector("shapes-judge"), load_colour_classifier("shapes-judge")
    (found,) = detect(torch.from_numpy(scene).permute(2, 0, 1)[None])
    assert sorted(d.label for d in found) == ["circle", "square"]
    meta = {
        "tag": "position",
        "include": [
            {"class": "square", "count": 1, "color": "blue"},
            {"class": "circle", "count": 1, "color": "red", "position": ["left of", 0]},
        ],
        "prompt": "a red circle left of a blue square",
    }
    assert judge(scene, found, meta, colours).correct
    meta["include"][1]["position"] = ["right of", 0]
    assert judge(scene, found, meta, colours).reason == "expected circle right of target, found left of"
