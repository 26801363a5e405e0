"""GenEval's rules (Ghosh et al. 2023) over any object detector: is each image what its prompt asks for?

A prompt's metadata (one line of GenEval's `evaluation_metadata.jsonl`) lists objects to include
(`class`, `count`, optional `color`, optional `position` relative to an earlier include) and to
exclude; the six tasks are its `tag`s. Given one image's detections and a colour classifier, the
rules below decide correct or not and say why, as GenEval's `evaluation/evaluate_images.py` does:

- a detection counts when its confidence is above 0.3 (0.9 for the counting task), the most
  confident 16 per class at most;
- each include needs `count` objects of its class; colour and position are checked on the `count`
  most confident ones; an exclude of count N fails when N or more are found (counting prompts
  include N and exclude N + 1: exactly N);
- position compares box centres, after shrinking the offset by 0.1 × the two boxes' summed size
  along each axis: only objects whose centres nearly coincide are in no relation, and touching or
  overlapping boxes still are (a box overlapping a little to the left of another is "left of" it);
- colour is a zero-shot CLIP choice among ten colours on the object's box crop, with the pixels
  outside its mask painted grey (#999999).

The detector and the colour classifier are arguments, so the rules are tested with drawn scenes
and a detector whose answers are known; `geneval_models.py` has the real ones.
"""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ldm_lightning.errors import UserError

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_MARGIN = 0.1
BACKGROUND = (153, 153, 153)  # "#999", the grey outside an object's mask in its colour crop


@dataclass(frozen=True)
class Detection:
    """One detected object: its class, confidence, box (x0, y0, x1, y1 in pixels) and optional H×W bool mask."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Judgement:
    """Whether an image satisfies its prompt's metadata, and each unmet requirement in words."""

    correct: bool
    reasons: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


# Colour of each of an image's objects of one class: (image H×W×3 uint8, detections, class name) -> colour names.
ColourClassifier = Callable[[np.ndarray, Sequence[Detection], str], list[str]]


def check_metadata(metadata: dict[str, Any], where: str) -> dict[str, Any]:
    """A metadata record with a known tag and well-formed include/exclude clauses, or a UserError naming the fault."""
    if metadata.get("tag") not in TASKS:
        raise UserError(f"{where}: tag {metadata.get('tag')!r} is not a GenEval task; use one of {', '.join(TASKS)}")
    includes = metadata.get("include", [])
    for i, clause in enumerate([*includes, *metadata.get("exclude", [])]):
        if not isinstance(clause, dict) or not isinstance(clause.get("class"), str):
            raise UserError(f"{where}: clause {clause!r} has no class name; give {{'class': NAME, 'count': N}}")
        if not isinstance(clause.get("count"), int) or clause["count"] < 1:
            raise UserError(f"{where}: clause {clause!r} needs a whole count of at least 1")
        if "color" in clause and clause["color"] not in COLORS:
            raise UserError(f"{where}: colour {clause['color']!r} is not one of GenEval's {', '.join(COLORS)}")
        if "position" in clause:
            relation, target = clause["position"]
            if relation not in RELATIONS or not (isinstance(target, int) and 0 <= target < min(i, len(includes))):
                raise UserError(
                    f"{where}: position {clause['position']!r} must be [one of {', '.join(RELATIONS)}, "
                    "the index of an earlier include]"
                )
    return metadata


def is_metadata_file(path: str | Path) -> bool:
    """Whether a file looks like GenEval's metadata: .jsonl whose first record has `tag` and `include`."""
    file = Path(path).expanduser()
    if file.suffix != ".jsonl" or not file.is_file():
        return False
    with file.open() as lines:
        first = next((line for line in lines if line.strip()), "")
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and "tag" in record and "include" in record


def read_metadata(path: str | Path) -> list[dict[str, Any]]:
    """The records of a GenEval `evaluation_metadata.jsonl` (one JSON object per line), checked."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"data.prompts: no GenEval metadata file at {str(path)!r}; check the path")
    records = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"data.prompts: {path}, line {number}: not JSON ({err.msg}); fix the line") from None
            records.append(check_metadata(record, f"data.prompts: {path}, line {number}"))
    return records


def kept_objects(detections: Sequence[Detection], tag: str) -> dict[str, list[Detection]]:
    """Per class, the detections GenEval keeps: above the confidence threshold, most confident first, at most 16.

    GenEval's optional overlap suppression is off by default (max_overlap=1.0), so none is applied.
    """
    threshold = COUNTING_THRESHOLD if tag == "counting" else THRESHOLD
    kept: dict[str, list[Detection]] = {}
    for det in sorted(detections, key=lambda d: -d.score):
        if det.score > threshold and len(kept.setdefault(det.label, [])) < MAX_OBJECTS:
            kept[det.label].append(det)
    return {label: objects for label, objects in kept.items() if objects}


def relative_position(a: Detection, b: Detection, margin: float = POSITION_MARGIN) -> set[str]:
    """Where `a` is relative to `b` (image y grows downwards): a subset of RELATIONS, empty when too close."""
    box_a, box_b = np.asarray(a.box, dtype=np.float64), np.asarray(b.box, dtype=np.float64)
    centre_a, centre_b = (box_a[:2] + box_a[2:]) / 2, (box_b[:2] + box_b[2:]) / 2
    size_a, size_b = np.abs(box_a[2:] - box_a[:2]), np.abs(box_b[2:] - box_b[:2])
    offset = centre_a - centre_b
    shrunk = np.maximum(np.abs(offset) - margin * (size_a + size_b), 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    # The shrunk offset over the full distance: a relation holds when its axis carries more than half of it.
    dx, dy = shrunk / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def object_crops(image: np.ndarray, objects: Sequence[Detection]) -> list[Image.Image]:
    """Each object's box crop, pixels outside its mask painted GenEval's grey (the whole box when it has no mask)."""
    picture = Image.fromarray(image).convert("RGB")
    grey = Image.new("RGB", picture.size, BACKGROUND)
    crops = []
    for det in objects:
        shown = picture
        if det.mask is not None:
            if det.mask.shape != image.shape[:2]:
                raise ValueError(f"mask {det.mask.shape} does not match image {image.shape[:2]}")
            shown = Image.composite(picture, grey, Image.fromarray(det.mask.astype(np.uint8) * 255))
        crops.append(shown.crop(tuple(round(v) for v in det.box)))  # PIL rounds fractional boxes the same way
    return crops


def judge(
    image: np.ndarray, detections: Sequence[Detection], metadata: dict[str, Any], colours: ColourClassifier
) -> Judgement:
    """GenEval's verdict on one image (H×W×3 uint8): includes are ANDed, excludes ORed."""
    objects = kept_objects(detections, metadata["tag"])
    reasons: list[str] = []
    matched: list[list[Detection] | None] = []  # each include's objects, or None when it failed
    for clause in metadata.get("include", []):
        name, count = clause["class"], clause["count"]
        found = objects.get(name, [])[:count]
        ok = len(found) >= count
        if not ok:
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        if ok and "color" in clause:
            seen = colours(image, found, name)
            if seen.count(clause["color"]) < count:
                ok = False
                tally = ", ".join(f"{seen.count(c)} {c}" for c in COLORS if c in seen)
                reasons.append(f"expected {clause['color']} {name}>={count}, found {tally}")
        if ok and "position" in clause:
            relation, target = clause["position"]
            if matched[target] is None:
                ok = False
                reasons.append(f"no target for {name} to be {relation}")
            else:
                for obj in found:
                    wrong = [relative_position(obj, t) for t in matched[target]]
                    wrong = [r for r in wrong if relation not in r]
                    if wrong:
                        ok = False
                        reasons.append(f"expected {name} {relation} target, found {' and '.join(sorted(wrong[0]))}")
                        break
        matched.append(found if ok else None)
    for clause in metadata.get("exclude", []):
        name, count = clause["class"], clause["count"]
        if len(objects.get(name, [])) >= count:
            reasons.append(f"expected {name}<{count}, found {len(objects[name])}")
    return Judgement(not reasons, tuple(reasons))


def _prompt_tallies(rows: Sequence[dict[str, Any]], task: str) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt of one task: how many of its images are correct, and how many were scored."""
    tallies: dict[Any, list[float]] = {}
    for position, r in enumerate(rows):
        if r.get("tag") == task and r.get("geneval") is not None:
            # Rows of one prompt share `prompt_index`; with one image per prompt each row is its own prompt.
            tally = tallies.setdefault(r.get("prompt_index", f"row {position}"), [0.0, 0.0])
            tally[0] += float(r["geneval"])
            tally[1] += 1
    counts = np.array(list(tallies.values()), dtype=np.float64).reshape(-1, 2)
    return counts[:, 0], counts[:, 1]


def _resampled_accuracies(correct: np.ndarray, scored: np.ndarray, rng: np.random.Generator, resamples: int):
    """Accuracies of `resamples` bootstrap resamples of the prompts (each with all its images)."""
    picks = rng.integers(0, len(correct), size=(resamples, len(correct)))
    return correct[picks].sum(axis=1) / scored[picks].sum(axis=1)


def summarize_geneval(rows: Sequence[dict[str, Any]], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Accuracy per task with a bootstrap interval, and overall = the mean of the task accuracies (GenEval's score).

    `rows` hold `tag`, `geneval` (True/False; None for an image left out) and, with several images per
    prompt, `prompt_index`. The intervals resample prompts, each with all its images: a prompt's images
    share its difficulty, so resampling images one by one would make the intervals too narrow. The overall
    interval resamples prompts within each task (stratified), so every resample keeps GenEval's task weighting.
    """
    tallies = {t: _prompt_tallies(rows, t) for t in TASKS}
    tallies = {t: v for t, v in tallies.items() if len(v[0])}
    tasks = {}
    low = high = float("nan")
    rng = np.random.default_rng(seed)
    resampled = {}
    for task, (correct, scored) in tallies.items():
        accuracy = float(correct.sum() / scored.sum())
        interval = [float("nan"), float("nan")]
        if len(correct) >= 2:
            resampled[task] = _resampled_accuracies(correct, scored, rng, resamples)
            interval = [float(x) for x in np.percentile(resampled[task], [2.5, 97.5])]
        tasks[task] = {"accuracy": accuracy, "ci95": interval, "n": int(scored.sum()), "n_prompts": len(correct)}
    overall = float(np.mean([t["accuracy"] for t in tasks.values()])) if tasks else float("nan")
    if tasks and len(resampled) == len(tasks):
        low, high = (float(x) for x in np.percentile(np.mean(list(resampled.values()), axis=0), [2.5, 97.5]))
    return {
        "geneval_overall": overall,
        "geneval_overall_ci95": [low, high],
        "geneval_tasks": tasks,
        "geneval_missing_tasks": [t for t in TASKS if t not in tasks],
    }
