"""Metric parts for `test` (`model.metrics`): the two interfaces a metric implements, and the built-ins.

A metric is either

- an `ImageMetric`: one number per image from the images, their prompts and their prompt rows
  (CLIPScore, PickScore, HPS v2, aesthetic, GenEval): a column of `results.jsonl`, a mean with a
  bootstrap interval in `summary.json`, per group and per prompt, `test/<name>` for `trainer.test`
  and TensorBoard; or
- a `SetMetric`: numbers over the whole set, from features of the generated images against features
  of `data.reference`'s real images (FID, KID, CMMD, FD-DINOv2, FD-CLIP).

Each is exactly-once over processes and nodes and resumes without recomputing finished rows: the
module keeps per-image values and features as torchmetrics state and in the run folder, so a metric
of your own gets that by implementing `score` (or `extractor` and `compute`) alone. In a config, a
built-in goes by its name (`clip_score`, `fid`, …) or by class path with its settings; your own by
class path.
"""

import hashlib
from abc import ABC, abstractmethod
from typing import Any, Literal

import numpy as np
import torch

from ldm_lightning.errors import UserError


class ImageMetric(ABC):
    """One number per image. Subclasses set `name` (the results column) and implement `score`."""

    name: str = ""

    def load(self, networks: "Networks") -> None:  # noqa: B027 (optional hook)
        """Load weights once per run, before the first batch (`networks` shares CLIPs between metrics)."""

    def to(self, device: torch.device) -> None:  # noqa: B027 (optional hook)
        """Move loaded networks to the run's device."""

    def check_rows(self, rows: list[dict[str, Any]]) -> None:  # noqa: B027 (optional hook)
        """Check every prompt row of the run before any sampling (e.g. that each carries what `score` needs)."""

    @abstractmethod
    def score(self, images: torch.Tensor, prompts: list[str], rows: list[dict[str, Any]]) -> list[float | None]:
        """Per image, its value (None: no value). `images`: uint8 (B, 3, H, W) on the run's device; `rows`:
        each image's prompt row (index, prompt, seed and the prompt table's other columns)."""

    def extra_columns(self) -> dict[str, list]:
        """Further per-image columns from the last `score` call (e.g. GenEval's reasons), written to results."""
        return {}

    def for_broken_image(self) -> dict[str, Any]:
        """The columns a black or non-finite image gets instead of its values: None by default (left out of the
        means, as CLIPScore leaves it out)."""
        return {self.name: None}


class SetMetric(ABC):
    """Numbers over the whole generated set against the reference set, from per-image features.

    Subclasses set `name`, `features` (a feature-set name: metrics with the same one share a single
    extraction and its stored features) and implement `extractor` and `compute`.
    """

    name: str = ""
    features: str = ""

    @abstractmethod
    def extractor(self, networks: "Networks") -> torch.nn.Module:
        """A module mapping uint8 (B, 3, H, W) images to float (B, D) features. Only the first metric of each
        `features` name is asked; the others share its features (and its `identity` and `preprocessing`)."""

    def identity(self) -> str:
        """What the reference features' cache is keyed on besides the files: the extractor's weights."""
        return f"{type(self).__module__}.{type(self).__qualname__}:{sorted(vars(self).items())}"

    @abstractmethod
    def compute(self, generated: np.ndarray, reference: np.ndarray) -> dict[str, float]:
        """The metric's values; the key `name` is the headline value (`test/<name>`)."""

    def logged(self) -> tuple[str, ...]:
        """The keys of `compute` logged as `test/<key>`."""
        return (self.name,)

    def preprocessing(self) -> str:
        """How the extractor resizes images, in words (recorded in the summary)."""
        return ""


class Networks:
    """Networks shared by the metrics of one module: one CLIP per checkpoint name, loaded when first asked for.

    It lives with the module, so deleting the module frees them.
    """

    def __init__(self, default_clip: str) -> None:
        """Args:
        default_clip: the CLIP that scores `test` images unless a metric names another.
        """
        self.default_clip = default_clip
        self._clips: dict[str, Any] = {}
        self._models: dict[str, torch.nn.Module] = {}  # every CLIPModel loaded, by the name it was loaded as

    def clip(self, name: str | None = None):
        """The (model, processor) of CLIP `name` (default: `default_clip`)."""
        from ldm_lightning.evaluation.clip_score import load_clip

        name = name or self.default_clip
        if name not in self._clips:
            self._clips[name] = load_clip(name)
            self._models.setdefault(name, self._clips[name][0].model)
        return self._clips[name]

    def loaded_clip(self, name: str) -> torch.nn.Module | None:
        """The transformers `CLIPModel` already loaded as `name` (by any metric), or None."""
        return self._models.get(name)

    def share_clip(self, name: str, model: torch.nn.Module) -> None:
        """Offer a `CLIPModel` a metric loaded as `name` to the metrics loaded after it."""
        self._models.setdefault(name, model)

    def modules(self) -> list[torch.nn.Module]:
        return list({id(m): m for m in self._models.values()}.values())


BROKEN_IMAGE_REASON = "black or non-finite image"


def require_file(path: str | None, missing: str, download: str, metric: str, setting: str) -> None:
    """A metric's weight file must be given: else one line saying how to get it and where to pass it."""
    if not path:
        raise UserError(
            f"model.metrics: {missing}; download it with `{download}` and pass "
            f"--model.metrics+={metric} --model.metrics.{setting} PATH"
        )


# ----- per image -----


class ClipScore(ImageMetric):
    """CLIPScore (Hessel et al. 2021): 100 · max(cos(image, prompt), 0), torchmetrics' definition.

    Args:
        model: the CLIP (hub id or folder). Default: the embedded "tiny-clip" for the embedded model,
            else openai/clip-vit-large-patch14.
    """

    name = "clip_score"

    def __init__(self, model: str | None = None) -> None:
        self.model = model
        self._clip = None

    def load(self, networks: Networks) -> None:
        self._clip = networks.clip(self.model)

    def score(self, images, prompts, rows):
        from ldm_lightning.evaluation.clip_score import score_images

        return score_images(images, prompts, self._clip)


class PickScore(ImageMetric):
    """PickScore (Kirstain et al. 2023): a CLIP-H fine-tuned on human preferences.

    Args:
        model: PickScore's CLIP (hub id or folder); default yuvalkirstain/PickScore_v1, processor from
            laion/CLIP-ViT-H-14-laion2B-s32B-b79K.
    """

    name = "pick_score"

    def __init__(self, model: str | None = None) -> None:
        self.model = model
        self._clip = None

    def load(self, networks: Networks) -> None:
        from ldm_lightning.evaluation import preference

        self._clip = preference.load_pick_score(self.model or preference.DEFAULT_PICK_SCORE)

    def to(self, device) -> None:
        self._clip.model.to(device)

    def score(self, images, prompts, rows):
        from ldm_lightning.evaluation.preference import pick_score

        return pick_score(images, prompts, self._clip)


class HPSv2(ImageMetric):
    """HPS v2 / v2.1 (Wu et al. 2023): an OpenCLIP ViT-H-14 fine-tuned on human preferences.

    Args:
        checkpoint: the HPS v2 / v2.1 checkpoint file (OpenCLIP format, e.g. HPS_v2.1_compressed.pt).
        clip: transformers CLIP ViT-H-14 config and processor (hub id or folder); default
            laion/CLIP-ViT-H-14-laion2B-s32B-b79K (its weights are not used).
    """

    name = "hpsv2"

    def __init__(self, checkpoint: str | None = None, clip: str | None = None) -> None:
        from ldm_lightning.evaluation.preference import HPSV2_DOWNLOAD

        require_file(checkpoint, "hpsv2 needs its checkpoint file", HPSV2_DOWNLOAD, "HPSv2", "checkpoint")
        self.checkpoint, self.clip = checkpoint, clip
        self._clip, self._n = None, 0

    def load(self, networks: Networks) -> None:
        from ldm_lightning.evaluation import preference

        self._clip = preference.load_hpsv2(self.checkpoint, self.clip or preference.VIT_H_14)

    def to(self, device) -> None:
        self._clip.model.to(device)

    def score(self, images, prompts, rows):
        from ldm_lightning.evaluation.preference import hpsv2

        scores = hpsv2(images, prompts, self._clip)
        self._n = len(scores)
        return scores

    def extra_columns(self) -> dict[str, list]:
        from ldm_lightning.evaluation.preference import hpsv2_version

        # v2.0 and v2.1 score on different scales: each row names the release that scored it.
        return {"hpsv2_version": [hpsv2_version(self.checkpoint)] * self._n}


class Aesthetic(ImageMetric):
    """The LAION aesthetic predictor (an MLP on CLIP ViT-L/14 image embeddings), 1–10.

    Args:
        weights: the predictor file (sac+logos+ava1-l14-linearMSE.pth).
        clip: CLIP ViT-L/14 (hub id or folder); default openai/clip-vit-large-patch14.
    """

    name = "aesthetic"

    def __init__(self, weights: str | None = None, clip: str | None = None) -> None:
        from ldm_lightning.evaluation.preference import AESTHETIC_DOWNLOAD

        require_file(weights, "aesthetic needs the predictor's weight file", AESTHETIC_DOWNLOAD, "Aesthetic", "weights")
        self.weights, self.clip = weights, clip
        self._scorer = None

    def load(self, networks: Networks) -> None:
        from ldm_lightning.evaluation import preference

        name = self.clip or preference.AESTHETIC_CLIP
        self._scorer = preference.load_aesthetic(self.weights, name, model=networks.loaded_clip(name))
        networks.share_clip(name, self._scorer.clip.model)

    def to(self, device) -> None:
        self._scorer.clip.model.to(device)
        self._scorer.head.to(device)

    def score(self, images, prompts, rows):
        from ldm_lightning.evaluation.preference import aesthetic

        return aesthetic(images, self._scorer)


class GenEval(ImageMetric):
    """GenEval (Ghosh et al. 2023): 1.0 when the image satisfies its prompt's GenEval metadata, else 0.0;
    the prompts must be a GenEval evaluation_metadata.jsonl. A black or broken image counts as wrong.

    Args:
        detector: a transformers Mask2Former (hub id or folder; default facebook/mask2former-swin-small-coco-instance),
            or "shapes-judge" for the embedded model.
        clip: the colour classifier's CLIP (default openai/clip-vit-large-patch14; "shapes-judge" colours with the
            pixel judge, the default with that detector).
    """

    name = "geneval"

    def __init__(self, detector: str | None = None, clip: str | None = None) -> None:
        self.detector, self.clip = detector, clip
        self._detect = self._colours = None
        self._reasons: list[str] = []
        self._size = (0, 0)

    def load(self, networks: Networks) -> None:
        from ldm_lightning.evaluation.geneval_models import DEFAULT_DETECTOR, load_colour_classifier, load_detector
        from ldm_lightning.evaluation.preference import AESTHETIC_CLIP

        detector = self.detector or DEFAULT_DETECTOR
        self._detect = load_detector(detector)
        name = self.clip or ("shapes-judge" if detector == "shapes-judge" else AESTHETIC_CLIP)
        self._colours = load_colour_classifier(name, model=networks.loaded_clip(name))
        if hasattr(self._colours, "clip"):  # a CLIP's classifier, not the pixel judge's
            networks.share_clip(name, self._colours.clip.model)

    def to(self, device) -> None:
        from ldm_lightning.evaluation.geneval_models import networks_of

        for network in networks_of(self._detect, self._colours):
            network.to(device)

    def check_rows(self, rows: list[dict[str, Any]]) -> None:
        """Every prompt row must carry GenEval metadata: checked before any sampling."""
        from ldm_lightning.evaluation.geneval_metadata import row_metadata

        for row in rows:
            row_metadata(row)

    def score(self, images, prompts, rows):
        from ldm_lightning.evaluation.geneval import judge
        from ldm_lightning.evaluation.geneval_metadata import row_metadata

        found = self._detect(images)
        verdicts = [
            judge(image.permute(1, 2, 0).cpu().numpy(), detections, row_metadata(row), self._colours)
            for image, detections, row in zip(images, found, rows)
        ]
        self._reasons, self._size = [v.reason for v in verdicts], tuple(images.shape[-2:])
        return [float(v.correct) for v in verdicts]

    def extra_columns(self) -> dict[str, list]:
        from ldm_lightning.evaluation.geneval_models import detector_input

        # Detection depends on the input size (small objects, the counting threshold, colour crops).
        size = detector_input(self._detect, *self._size)
        return {"geneval_reason": self._reasons, "geneval_detector_input": [size] * len(self._reasons)}

    def for_broken_image(self) -> dict[str, Any]:
        # GenEval scores every image it is given and divides by all of them: a broken image is a wrong answer.
        return {"geneval": 0.0, "geneval_reason": BROKEN_IMAGE_REASON}


# ----- over the set -----


class FID(SetMetric):
    """FID (Heusel et al. 2017) on the FID Inception's pool3 features, and FID∞ (Chong & Forsyth 2020).

    Args:
        inception_weights: local TorchScript file of the FID Inception network, inception-2015-12-05.pt
            (StyleGAN2-ADA / clean-fid / EDM). FID and KID share one extraction: give it to the first of them.
    """

    name, features = "fid", "inception"

    def __init__(self, inception_weights: str | None = None) -> None:
        self.inception_weights = inception_weights
        self._net = None

    def extractor(self, networks):
        from ldm_lightning.evaluation.features import load_inception

        if self._net is None:
            self._net = load_inception(self.inception_weights)
        return self._net

    def identity(self) -> str:
        return self._net.identity

    def preprocessing(self) -> str:
        return self._net.resize

    def compute(self, generated, reference):
        from ldm_lightning.evaluation.distribution import frechet_distance, frechet_infinity

        return {"fid": frechet_distance(reference, generated), "fid_infinity": frechet_infinity(reference, generated)}

    def logged(self):
        return ("fid", "fid_infinity")


class KID(FID):
    """KID (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel on Inception features.

    Args:
        inception_weights: as FID's.
    """

    name = "kid"

    def compute(self, generated, reference):
        from ldm_lightning.evaluation.distribution import kernel_distance

        return kernel_distance(reference, generated)

    def logged(self):
        return ("kid_mean", "kid_std")


class _ClipFeatureMetric(SetMetric):
    def __init__(self, clip: str | None = None) -> None:
        self.clip = clip
        # The scoring CLIP's features keep the plain name; another CLIP's get a stable suffix of their own.
        self.features = "clip" if clip is None else "clip_" + hashlib.sha256(clip.encode()).hexdigest()[:8]
        self._net = None

    def extractor(self, networks):
        from ldm_lightning.evaluation.clip_score import clip_source
        from ldm_lightning.evaluation.features import ClipImageFeatures

        if self._net is None:
            name = self.clip or networks.default_clip
            self._net = ClipImageFeatures(networks.clip(name), name, clip_source(name))
        return self._net

    def identity(self) -> str:
        return self._net.identity

    def preprocessing(self) -> str:
        return self._net.resize


class CMMD(_ClipFeatureMetric):
    """CMMD (Jayasumana et al. 2024): MMD² × 1000 of CLIP image embeddings, Gaussian RBF kernel.

    Args:
        clip: the CLIP (hub id or folder); default the scoring CLIP (ClipScore's).
        estimator: "biased" averages over all pairs, i = j included, as the authors' code (google-research/cmmd)
            and published values do; "unbiased" over pairs i ≠ j (can go below 0 on small sets).
    """

    name = "cmmd"

    def __init__(self, clip: str | None = None, estimator: Literal["biased", "unbiased"] = "biased") -> None:
        super().__init__(clip)
        self.estimator = estimator

    def compute(self, generated, reference):
        from ldm_lightning.evaluation.distribution import cmmd

        return {"cmmd": cmmd(reference, generated, estimator=self.estimator), "cmmd_estimator": self.estimator}


class FDClip(_ClipFeatureMetric):
    """Fréchet distance on CLIP image embeddings.

    Args:
        clip: the CLIP (hub id or folder); default the scoring CLIP (ClipScore's).
    """

    name = "fd_clip"

    def compute(self, generated, reference):
        from ldm_lightning.evaluation.distribution import frechet_distance

        return {"fd_clip": frechet_distance(reference, generated)}


class FDDinov2(SetMetric):
    """Fréchet distance on DINOv2's CLS features (Stein et al. 2023).

    Args:
        model: DINOv2 (hub id or folder); default facebook/dinov2-large.
    """

    name, features = "fd_dinov2", "dinov2"

    def __init__(self, model: str | None = None) -> None:
        self.model = model
        self._net = None

    def extractor(self, networks):
        from ldm_lightning.evaluation.features import DEFAULT_DINOV2, Dinov2Features

        if self._net is None:
            self._net = Dinov2Features(self.model or DEFAULT_DINOV2)
        return self._net

    def identity(self) -> str:
        return self._net.identity

    def preprocessing(self) -> str:
        return self._net.resize

    def compute(self, generated, reference):
        from ldm_lightning.evaluation.distribution import frechet_distance

        return {"fd_dinov2": frechet_distance(reference, generated)}


BUILT_IN: dict[str, type] = {
    m.name: m for m in (ClipScore, PickScore, HPSv2, Aesthetic, GenEval, FID, KID, CMMD, FDClip, FDDinov2)
}
