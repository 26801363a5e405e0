"""Every `test` metric at once (CLIPScore, PickScore, GenEval, FID, KID, CMMD, FD-DINOv2, FD-CLIP) on two
processes, and after a SIGKILL and the same command again, gives the rows and numbers of one process."""

import json
import logging
from pathlib import Path

import pytest
from helpers import METRICS, kill_after_rows, manifest, run_cli, run_cli_subprocess
from PIL import Image
from test_per_image_metrics import METADATA
from test_quality import QUALITY, _close, extractors, feature_cache, quality_metrics, reference  # noqa: F401 (fixtures)

N = 8  # 4 images of each of 2 GenEval prompts


@pytest.fixture(scope="module")
def one_run(tiny_model, tiny_clip, extractors, reference, tmp_path_factory) -> tuple[list[str], Path]:  # noqa: F811
    """The arguments of the run, and its folder in one process."""
    folder = tmp_path_factory.mktemp("metrics")
    prompts = folder / "evaluation_metadata.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in METADATA))
    pick_score = {"class_path": f"{METRICS}.PickScore", "init_args": {"model": tiny_clip}}
    geneval = {"class_path": f"{METRICS}.GenEval", "init_args": {"detector": "shapes-judge"}}
    metrics = ["clip_score", pick_score, geneval, "fid", "kid", "cmmd", "fd_dinov2", "fd_clip"]
    args = [
        "test",
        f"--model.pretrained_model_name_or_path={tiny_model}",
        "--model.sampling.num_inference_steps=2",
        "--model.sampling.height=32",
        "--model.sampling.width=32",
        f"--model.metrics={quality_metrics(metrics, tiny_clip, extractors)}",
        f"--data.reference={reference}",
        f"--data.prompts={prompts}",
        "--data.images_per_prompt=4",
        "--data.batch_size=1",
        "--trainer.enable_progress_bar=false",
    ]
    assert run_cli([*args, f"--output_dir={folder / 'one'}"])[0] == 0
    rows = manifest(folder / "one", "results.jsonl")
    assert [(r["index"], r["seed"]) for r in rows] == [(i, i) for i in range(N)]
    return args, folder / "one"


def assert_same_results(folder: Path, one: Path) -> None:
    """The rows, per-image scores, GenEval verdicts and distribution metrics of one process's run."""
    a, b = manifest(one, "results.jsonl"), manifest(folder, "results.jsonl")
    assert [(r["index"], r["seed"]) for r in b] == [(r["index"], r["seed"]) for r in a]
    assert len(manifest(folder)) == N  # the manifest too: nothing lost, nothing twice
    for x, y in zip(a, b):
        assert abs(x["clip_score"] - y["clip_score"]) <= 1e-3
        assert abs(x["pick_score"] - y["pick_score"]) <= 1e-4 and x["geneval"] == y["geneval"]
    s1, s2 = (json.loads((f / "summary.json").read_text()) for f in (one, folder))
    assert s1["n"] == s2["n"] == s1["pick_score_n"] == s2["pick_score_n"] == s2["n_generated"] == N
    assert abs(s1["clip_score_mean"] - s2["clip_score_mean"]) <= 1e-3
    assert abs(s1["pick_score_mean"] - s2["pick_score_mean"]) <= 1e-4
    assert s1["geneval_tasks"] == s2["geneval_tasks"]
    for key in QUALITY:
        assert _close(s2[key], s1[key], 1e-3), (key, s1[key], s2[key])


@pytest.mark.ddp
def test_two_processes_give_the_results_of_one(one_run, tmp_path):
    args, one = one_run
    two = tmp_path / "two"
    done = run_cli_subprocess([*args, f"--output_dir={two}", "--config=configs/devices/ddp-cpu-2.yaml"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted({p.name[:5] for p in (two / "features").glob("*.npz")}) == ["rank0", "rank1"]
    assert_same_results(two, one)


def test_a_killed_run_resumes_to_the_results_of_one(one_run, tmp_path, caplog):
    args, one = one_run
    # SIGKILL mid-run (no chance to clean up), then the same command again.
    killed = tmp_path / "killed"
    done = kill_after_rows([*args, f"--output_dir={killed}"], killed / "results.jsonl", rows=3)
    assert 1 <= done < N, "the run should have been killed mid-way"
    before = {p.name: p.stat().st_mtime_ns for p in (killed / "features").glob("*.npz")}
    with caplog.at_level(logging.INFO):
        assert run_cli([*args, f"--output_dir={killed}"])[0] == 0
    assert any(f"Resuming {killed}" in r.getMessage() for r in caplog.records)
    assert not list(killed.glob(".*.tmp"))  # no half-written files left behind
    assert len(list(killed.glob("0*.png"))) == N
    for r in manifest(killed, "results.jsonl"):
        Image.open(killed / r["image"]).load()
    after = {p.name: p.stat().st_mtime_ns for p in (killed / "features").glob("*.npz")}
    finished = [r["index"] for r in manifest(killed, "results.jsonl")][:done]
    kept = {f"rank0-{i:06d}.npz" for i in finished}
    assert kept and all(before[name] == after[name] for name in kept)  # stored features were not redone
    assert len(after) == N
    assert_same_results(killed, one)
