"""`test`'s distribution metrics: equal to independent computations, cached, checked input (1 = 2 processes and
kill and resume: `test_metrics_processes.py`)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import METRICS, cli_args, manifest, metrics_arg, run_cli
from PIL import Image
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from transformers import AutoImageProcessor, AutoProcessor, CLIPModel, Dinov2Model

from ldm_lightning.evaluation import distribution
from ldm_lightning.evaluation.distribution import frechet_infinity

PROMPTS = json.dumps(
    ["a red circle", "a blue square", "a green star", "a red cross", "a white triangle", "a cyan star"]
)
ALL = ("clip_score", "fid", "kid", "cmmd", "fd_dinov2", "fd_clip")
QUALITY = ("fid", "fid_infinity", "kid_mean", "cmmd", "fd_dinov2", "fd_clip")


@pytest.fixture(scope="module", autouse=True)
def feature_cache(tmp_path_factory):
    """The reference-feature cache of this module's runs (shared by them, as by the runs of a sweep)."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("cache")
        patch.setenv("LDM_LIGHTNING_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def extractors(tmp_path_factory):
    """A tiny stand-in for the FID Inception TorchScript file, and a tiny DINOv2 folder."""
    from ldm_lightning.testing import build_tiny_dinov2, build_tiny_inception

    folder = tmp_path_factory.mktemp("extractors")
    return str(build_tiny_inception(folder / "inception.pt")), str(build_tiny_dinov2(folder / "dinov2"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Ten drawn shapes (64², PNG) and one file that is not an image."""
    from ldm_lightning.shapes.reference import draw_reference

    folder = tmp_path_factory.mktemp("reference") / "real"
    draw_reference(folder / "nested", json.loads(PROMPTS)[:5], per_prompt=2)
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def quality_metrics(names, clip, extractors) -> str:
    """`--model.metrics` of `names` (metric dicts kept as they are): CLIPScore and the CLIP-feature metrics with
    `clip`, FID (its Inception serving KID too, or KID's own when alone) with the tiny Inception, FD-DINOv2 with
    the tiny DINOv2."""
    inception, dinov2 = extractors
    settings = {
        "fid": ("FID", {"inception_weights": inception}),
        "kid": ("KID", {"inception_weights": inception}),
        "fd_dinov2": ("FDDinov2", {"model": dinov2}),
    }
    if "fid" in names:
        del settings["kid"]  # weights given to the first of FID and KID suffice
    listed = [
        {"class_path": f"{METRICS}.{settings[n][0]}", "init_args": settings[n][1]}
        if isinstance(n, str) and n in settings
        else n
        for n in names
    ]
    return metrics_arg(*listed, clip=clip)


def quality_args(model, clip, extractors, reference, out: Path, *extra: str, metrics=ALL) -> list[str]:
    quality = [f"--model.metrics={quality_metrics(metrics, clip, extractors)}", f"--data.reference={reference}"]
    return cli_args("test", *quality, *extra, model=model, steps=3, prompts=PROMPTS, batch_size=4, out=out)


@pytest.fixture(scope="module")
def one_process(tiny_model, tiny_clip, extractors, reference, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    assert run_cli(quality_args(tiny_model, tiny_clip, extractors, reference, out))[0] == 0
    return out


def _images(paths: list[Path]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1) for p in paths]


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance in numpy: Tr((Σa Σb)^½) as Tr((Σa^½ Σb Σa^½)^½), a symmetric PSD square root."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root @ sb @ root)
    return float(
        ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(np.clip(middle, 0, None)).sum()
    )


def _cmmd(a: np.ndarray, b: np.ndarray, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """google-research/cmmd `distance.mmd` in numpy: every pair averaged (i = j included), squared distances
    written out from the Gram matrices as the authors do."""
    x = a / np.linalg.norm(a, axis=1, keepdims=True)
    y = b / np.linalg.norm(b, axis=1, keepdims=True)
    gamma = 1 / (2 * sigma**2)
    xn, yn = np.diag(x @ x.T), np.diag(y @ y.T)
    k_xx = np.mean(np.exp(-gamma * (-2 * x @ x.T + xn[:, None] + xn[None, :])))
    k_xy = np.mean(np.exp(-gamma * (-2 * x @ y.T + xn[:, None] + yn[None, :])))
    k_yy = np.mean(np.exp(-gamma * (-2 * y @ y.T + yn[:, None] + yn[None, :])))
    return float(scale * (k_xx + k_yy - 2 * k_xy))


def _cmmd_unbiased(a: np.ndarray, b: np.ndarray, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """Unbiased MMD² with a Gaussian kernel on unit vectors, by explicit loops over pairs (i != j within a set)."""
    x = a / np.linalg.norm(a, axis=1, keepdims=True)
    y = b / np.linalg.norm(b, axis=1, keepdims=True)
    k = lambda p, q: np.exp(-np.sum((p - q) ** 2) / (2 * sigma**2))  # noqa: E731
    xx = np.mean([k(x[i], x[j]) for i in range(len(x)) for j in range(len(x)) if i != j])
    yy = np.mean([k(y[i], y[j]) for i in range(len(y)) for j in range(len(y)) if i != j])
    xy = np.mean([k(p, q) for p in x for q in y])
    return float(scale * (xx + yy - 2 * xy))


def test_cmmd_defaults_to_the_authors_estimator_and_keeps_the_unbiased_one():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(16, 64)), rng.normal(size=(16, 64))  # 1.06 (authors) and -0.20 (unbiased)
    authors, unbiased = distribution.cmmd(real, fake), distribution.cmmd(real, fake, estimator="unbiased")
    assert authors == pytest.approx(_cmmd(real, fake), rel=1e-9)
    assert unbiased == pytest.approx(_cmmd_unbiased(real, fake), rel=1e-9)
    assert authors >= 0 > unbiased  # two samples of one distribution: only the unbiased estimate goes below 0
    from ldm_lightning.evaluation.metrics import CMMD

    assert CMMD().compute(fake, real) == {"cmmd": authors, "cmmd_estimator": "biased"}
    assert CMMD(estimator="unbiased").compute(fake, real)["cmmd"] == unbiased
    with pytest.raises(ValueError, match="estimator 'u-statistic'"):
        distribution.cmmd(real, fake, estimator="u-statistic")


def _close(value: float, expected: float, rel: float) -> bool:
    return abs(value - expected) <= rel * max(abs(expected), 1e-3)


def test_fid_infinity_extrapolates_fid_to_an_infinite_sample(monkeypatch):
    # Chong & Forsyth 2020: FID of N generated images is FID∞ + k/N to first order, so where the FID of
    # each subset is exactly 3 + 7/N the extrapolation to 1/N = 0 must give 3, whatever subsets are drawn.
    sizes_seen = []

    def line_in_one_over_n(real, fake):
        sizes_seen.append(len(fake))
        return 3.0 + 7.0 / len(fake)

    monkeypatch.setattr(distribution, "frechet_distance", line_in_one_over_n)
    real, fake = np.zeros((10, 4)), np.arange(200.0).reshape(50, 4)
    assert frechet_infinity(real, fake) == pytest.approx(3.0, abs=1e-9)
    assert min(sizes_seen) == 10 and max(sizes_seen) == 50 and len(set(sizes_seen)) == 15  # N/5 to N, 15 sizes


class _Inception(torch.nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.net = torch.jit.load(path)

    def forward(self, images):
        return self.net(images, return_features=True)


def test_each_metric_equals_an_independent_computation(one_process, tiny_clip, extractors, reference, feature_cache):
    summary = json.loads((one_process / "summary.json").read_text())
    rows = manifest(one_process, "results.jsonl")
    generated = _images([one_process / r["image"] for r in rows])
    real_files = sorted(p for p in reference.rglob("*.png") if p.name != "broken.png")
    real = _images(real_files)
    assert summary["n_generated"] == 6 and summary["n_reference"] == 10 and summary["n_reference_skipped"] == 1
    assert "bilinear" in summary["resize"]["inception"]

    fid = FrechetInceptionDistance(feature=_Inception(extractors[0]))
    # 100 subsets of min(1000, 10 real, 6 generated) images each, drawn after seeding the global RNG with 0.
    kid = KernelInceptionDistance(feature=_Inception(extractors[0]), subsets=100, subset_size=6)
    for metric in (fid, kid):
        metric.update(torch.stack(real), real=True)
        metric.update(torch.stack(generated), real=False)
    assert _close(summary["fid"], float(fid.compute()), 1e-4)
    # FID∞ is fed the same Inception features as FID (its extrapolation is tested on its own below).
    with torch.no_grad():
        inception = _Inception(extractors[0])
        features = [inception(torch.stack(images)).double().numpy() for images in (real, generated)]
    assert _close(summary["fid_infinity"], frechet_infinity(*features), 1e-4)
    torch.manual_seed(0)
    kid_mean, kid_std = kid.compute()
    assert _close(summary["kid_mean"], float(kid_mean), 1e-4) and _close(summary["kid_std"], float(kid_std), 1e-4)

    clip, processor = CLIPModel.from_pretrained(tiny_clip), AutoProcessor.from_pretrained(tiny_clip)

    def clip_features(images):
        with torch.no_grad():
            pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
            return clip.get_image_features(pixel_values=pixel_values).pooler_output.numpy()

    assert _close(summary["fd_clip"], _frechet(clip_features(real), clip_features(generated)), 1e-4)
    assert _close(summary["cmmd"], _cmmd(clip_features(real), clip_features(generated)), 1e-4)
    assert summary["cmmd_estimator"] == "biased"

    dino, dino_processor = Dinov2Model.from_pretrained(extractors[1]), AutoImageProcessor.from_pretrained(extractors[1])

    def dino_features(images):
        with torch.no_grad():
            return dino(pixel_values=dino_processor(images=images, return_tensors="pt")["pixel_values"]).pooler_output

    assert _close(summary["fd_dinov2"], _frechet(dino_features(real).numpy(), dino_features(generated).numpy()), 1e-4)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(one_process / "tensorboard")).Reload()
    logged = {f"test/{k}" for k in ("clip_score", "fid", "kid_mean", "kid_std", "cmmd", "fd_dinov2", "fd_clip")}
    assert logged <= set(events.Tags()["scalars"])
    assert not any(tag.startswith("hp/") for tag in events.Tags()["scalars"])  # no copies beside the scores
    assert (one_process.parent / "run" / "features").is_dir()
    assert len(list(feature_cache.glob("reference-*.npz"))) == 3  # one cache per feature network


def test_reference_features_are_cached_and_recomputed_when_a_file_changes(extractors, tmp_path):
    from ldm_lightning.evaluation.features import load_inception
    from ldm_lightning.evaluation.real_images import list_reference, reference_features
    from ldm_lightning.shapes.reference import draw_reference

    draw_reference(tmp_path / "real", ["a red circle", "a blue star", "a green square"])
    net = load_inception(extractors[0])
    calls = []
    net.register_forward_hook(lambda module, args, out: calls.append(len(out)))
    files = list_reference(str(tmp_path / "real"))
    first, _ = reference_features(files, {"inception": net}, tmp_path / "runs")
    assert calls == [3]
    again, _ = reference_features(files, {"inception": net}, tmp_path / "runs")
    assert calls == [3] and np.array_equal(first["inception"], again["inception"])
    files[1].write_bytes((tmp_path / "real" / files[0].name).read_bytes())  # a changed reference image
    changed, _ = reference_features(files, {"inception": net}, tmp_path / "runs")
    assert calls == [3, 3]
    assert np.allclose(changed["inception"][1], first["inception"][0], atol=1e-6)
    assert len(list((tmp_path / "runs").glob("reference-inception-*.npz"))) == 2


def test_reference_from_a_table_and_a_glob(tmp_path):
    from ldm_lightning.evaluation.real_images import list_reference
    from ldm_lightning.shapes.reference import draw_reference

    files = draw_reference(tmp_path / "images", ["a red circle", "a blue star"])
    (tmp_path / "real.csv").write_text("image,caption\n" + "".join(f"images/{f.name},x\n" for f in files))
    assert list_reference(str(tmp_path / "real.csv")) == [tmp_path / "images" / f.name for f in files]
    assert list_reference(str(tmp_path / "images" / "*.png")) == sorted(files)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "data.reference: nothing at"),
        ("empty", "data.reference: no .png/.jpg/.webp images"),
        ("table", "has no `image` column"),
        ("corrupt", "data.reference: none of the 2 images could be read"),
        ("single", "data.reference: 1 readable image"),
        ("no_reference", "data.reference: model.metrics"),
        ("no_inception", "model.metrics: FID.inception_weights: fid and kid need the FID Inception network"),
        ("few_prompts", "data.prompts: set metrics need at least 2"),
        ("bad_inception", "inception.pt' is not a TorchScript file ("),
        ("no_dinov2", "model.metrics: FDDinov2.model: could not load DINOv2"),
    ],
)
def test_bad_quality_input_gives_one_clear_message(tiny_model, tiny_clip, extractors, tmp_path, capsys, case, message):
    from ldm_lightning.shapes.reference import draw_reference

    real = tmp_path / "real"
    real.mkdir()
    metrics = ("clip_score", "fd_clip")
    if case == "table":
        (tmp_path / "real.csv").write_text("path\na.png\n")
        real = tmp_path / "real.csv"
    elif case == "corrupt":
        (real / "a.png").write_bytes(b"x")
        (real / "b.jpg").write_bytes(b"")
    elif case in ("single", "no_reference", "no_inception", "few_prompts", "bad_inception", "no_dinov2"):
        draw_reference(real, ["a red circle"] if case == "single" else ["a red circle", "a blue star"])
    args = quality_args(
        tiny_model,
        tiny_clip,
        extractors,
        real if case != "missing" else tmp_path / "no",
        tmp_path / "run",
        metrics=metrics,
    )
    if case == "no_reference":
        args = [a for a in args if not a.startswith("--data.reference")]
    if case == "no_inception":
        args.append(f"--model.metrics={metrics_arg('fid', clip=tiny_clip)}")  # FID without its Inception
    if case == "few_prompts":
        args.append('--data.prompts=["one prompt"]')
    if case == "bad_inception":
        (tmp_path / "inception.pt").write_bytes(b"not TorchScript")
        kid = {"class_path": f"{METRICS}.KID", "init_args": {"inception_weights": str(tmp_path / "inception.pt")}}
        args.append(f"--model.metrics={metrics_arg(kid, clip=tiny_clip)}")
    if case == "no_dinov2":
        dinov2 = {"class_path": f"{METRICS}.FDDinov2", "init_args": {"model": str(tmp_path / "no-dinov2")}}
        args.append(f"--model.metrics={metrics_arg(dinov2, clip=tiny_clip)}")
    code, err = run_cli(args, capsys)
    assert code == 2
    ours = err[err.rindex("error:") :]
    assert message in ours and "Traceback" not in ours
    assert not list((tmp_path / "run").glob("*.png")) and not (tmp_path / "run" / "results.jsonl").exists()
    if case == "no_inception":
        assert "inception-2015-12-05.pt" in ours and "nvlabs-fi-cdn.nvidia.com" in ours


def test_sweep_draws_the_quality_vs_clip_score_curve(tiny_model, tiny_clip, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("LDM_LIGHTNING_CACHE", str(tmp_path / "cache"))
    from ldm_lightning.lab.sweep import main as sweep

    passthrough = cli_args(
        None,
        f"--data.reference={reference}",
        f"--model.metrics={metrics_arg('fd_clip', clip=tiny_clip)}",
        model=tiny_model,
        prompts='["a red circle", "a blue star", "a cross"]',
    )
    rows = sweep(["--guidance", "1", "4", "--steps", "3", "--out", str(tmp_path), "--", *passthrough])
    assert [r["guidance_scale"] for r in rows] == [1, 4]
    assert all(r["fd_clip"] > 0 and r["n_generated"] == 3 and r["n_reference"] == 10 for r in rows)
    assert rows[0]["fd_clip"] != rows[1]["fd_clip"]
    assert (tmp_path / "fid_vs_clip.png").stat().st_size > 0 and "fd_clip" in (tmp_path / "sweep.md").read_text()
    assert len(list((tmp_path / "cache").glob("reference-clip-*.npz"))) == 1  # computed by the first run, reused
