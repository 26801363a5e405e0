"""The per-image metrics besides CLIPScore, as `test` runs them: loaded once, applied to each batch.

Each scorer maps a batch (uint8 images, prompts, each row's GenEval metadata) to one number per
image: PickScore, HPS v2 and the aesthetic score from `preference.py`; for `geneval` 1.0 or 0.0 from
`geneval.py`'s rules, with the reason for each wrong image. Besides the scores, each row says which
HPS release scored it (`hpsv2_version`) and at what size GenEval's detector saw it
(`geneval_detector_input`). Scorers are kept outside the LightningModule's submodules so that
Lightning's precision casts never reach them (fp32 throughout).
"""

import functools
import json
from dataclasses import dataclass
from typing import Any

import torch

from ldm_lightning.errors import UserError
from ldm_lightning.evaluation import preference
from ldm_lightning.evaluation.geneval import check_metadata, judge
from ldm_lightning.evaluation.names import PER_IMAGE_METRICS

GENEVAL_COLUMN = "geneval_metadata"  # a prompt row's GenEval metadata, as JSON text


@dataclass(frozen=True)
class ScorerSettings:
    """Where each per-image scorer's weights are (None: its default, where it has one)."""

    pick_score_model: str | None = None
    hpsv2_checkpoint: str | None = None
    hpsv2_clip: str | None = None
    aesthetic_weights: str | None = None
    aesthetic_clip: str | None = None
    geneval_detector: str | None = None
    geneval_clip: str | None = None


def check_settings(metrics: list[str], settings: ScorerSettings) -> None:
    """Fail before any work when a requested metric has no weights file to load."""
    if "hpsv2" in metrics and not settings.hpsv2_checkpoint:
        raise UserError(
            f"model.hpsv2_checkpoint: model.metrics has hpsv2 but no checkpoint file; download it with "
            f"`{preference.HPSV2_DOWNLOAD}` and pass its path"
        )
    if "aesthetic" in metrics and not settings.aesthetic_weights:
        raise UserError(
            f"model.aesthetic_weights: model.metrics has aesthetic but no weight file; download it with "
            f"`{preference.AESTHETIC_DOWNLOAD}` and pass its path"
        )


BROKEN_IMAGE_REASON = "black or non-finite image"


def value_for_image(name: str, value: Any, healthy: bool) -> Any:
    """What a per-image column holds for an image, given whether the image is healthy (finite, not black).

    Scores of broken images are left out of the means (None), as CLIPScore's are, except GenEval's: GenEval
    scores every image it is given, so a broken image counts as wrong (0.0, with its reason) and stays in the
    denominator. Descriptions of how a column was computed (e.g. `hpsv2_version`) are kept.
    """
    if healthy:
        return value
    if name == "geneval":
        return 0.0
    if name == "geneval_reason":
        return BROKEN_IMAGE_REASON
    return None if name in PER_IMAGE_METRICS else value


class PerImageScorers:
    """The requested per-image scorers (CLIPScore aside), each network loaded once per process."""

    def __init__(self, metrics: list[str], settings: ScorerSettings):
        """
        Args:
            metrics: `model.metrics`; the per-image ones among pick_score, hpsv2, aesthetic, geneval are loaded.
            settings: where their weights are.
        """
        check_settings(metrics, settings)
        self.names = tuple(m for m in ("pick_score", "hpsv2", "aesthetic", "geneval") if m in metrics)
        s = settings
        self.pick = (
            preference.load_pick_score(s.pick_score_model or preference.DEFAULT_PICK_SCORE)
            if "pick_score" in metrics
            else None
        )
        self.hps = (
            preference.load_hpsv2(s.hpsv2_checkpoint, s.hpsv2_clip or preference.VIT_H_14)
            if "hpsv2" in metrics
            else None
        )
        self.hps_version = preference.hpsv2_version(s.hpsv2_checkpoint)
        self.aesthetic = (
            preference.load_aesthetic(s.aesthetic_weights, s.aesthetic_clip or preference.AESTHETIC_CLIP)
            if "aesthetic" in metrics
            else None
        )
        self.detect = self.colours = self.detector_input = None
        if "geneval" in metrics:
            from ldm_lightning.evaluation.geneval_models import (
                DEFAULT_DETECTOR,
                detector_input,
                load_colour_classifier,
                load_detector,
            )

            detector = s.geneval_detector or DEFAULT_DETECTOR
            self.detect = load_detector(detector)
            self.detector_input = functools.partial(detector_input, self.detect)
            colours = s.geneval_clip or ("shapes-judge" if detector == "shapes-judge" else preference.AESTHETIC_CLIP)
            self.colours = load_colour_classifier(colours)

    value_for_image = staticmethod(value_for_image)

    def networks(self) -> list[torch.nn.Module]:
        """Every loaded network, for moving them to the run's device."""
        found = [c.model for c in (self.pick, self.hps) if c is not None]
        if self.aesthetic is not None:
            found += [self.aesthetic.clip.model, self.aesthetic.head]
        if hasattr(self.detect, "model"):  # a Mask2Former (the pixel judge has no network)
            found.append(self.detect.model)
        if hasattr(self.colours, "clip"):  # the CLIP colour classifier
            found.append(self.colours.clip.model)
        return [n for n in found if isinstance(n, torch.nn.Module)]

    def to(self, device: torch.device) -> "PerImageScorers":
        for network in self.networks():
            network.to(device)
        return self

    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any] | None]
    ) -> dict[str, list[float | str]]:
        """Each requested metric's value per image; `geneval_reason` too when GenEval is asked for."""
        out: dict[str, list] = {}
        if self.pick is not None:
            out["pick_score"] = preference.pick_score(images, prompts, self.pick)
        if self.hps is not None:
            out["hpsv2"] = preference.hpsv2(images, prompts, self.hps)
            out["hpsv2_version"] = [self.hps_version] * len(images)  # v2.0 and v2.1 score on different scales
        if self.aesthetic is not None:
            out["aesthetic"] = preference.aesthetic(images, self.aesthetic)
        if self.detect is not None:
            found = self.detect(images)
            verdicts = [
                judge(image.permute(1, 2, 0).cpu().numpy(), detections, meta, self.colours)
                for image, detections, meta in zip(images, found, metadata)
            ]
            out["geneval"] = [float(v.correct) for v in verdicts]
            out["geneval_reason"] = [v.reason for v in verdicts]
            # Detection depends on the input size (small objects, the counting threshold, colour crops).
            out["geneval_detector_input"] = [self.detector_input(*images.shape[-2:])] * len(images)
        return out


def row_metadata(row: dict[str, Any]) -> dict[str, Any]:
    """A prompt row's GenEval metadata, or a UserError when the prompts are not a GenEval metadata file."""
    text = row.get(GENEVAL_COLUMN)
    if not text:
        raise UserError(
            f"data.prompts: model.metrics geneval needs GenEval metadata per prompt; row {row['index']} has none; "
            "pass a GenEval evaluation_metadata.jsonl (lines with tag, include, exclude, prompt)"
        )
    return check_metadata(json.loads(text), f"data.prompts: row {row['index']}")
