"""The lab bench commands run on the tiny model and print their tables."""

import csv
import gc
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli_args, compile_without_codegen, exact_wilcoxon_p, manifest, run_module

from ldm_lightning.lab.benchmark_report import parse_tables
from ldm_lightning.lab.sweep import main as sweep

ROOT = Path(__file__).parents[1]


def sweep_passthrough(model: str, clip: str, prompts: str) -> list[str]:
    """What a sweep passes (after `--`) to every `test` run on the tiny model."""
    return ["--", *cli_args(None, model=model, clip=clip, prompts=prompts)]


def live_modules() -> int:
    from ldm_lightning.module import LatentDiffusionModule

    gc.collect()
    return sum(type(o) is LatentDiffusionModule for o in gc.get_objects())  # not the weak proxies Lightning keeps


def test_sweep_writes_table_plot_grid_and_distances(tiny_model, tiny_clip, tmp_path):
    before = live_modules()
    rows = sweep(
        [
            "--guidance",
            "1",
            "4",
            "--schedulers",
            "ddim",
            "euler",
            "--steps",
            "3",
            "--reference",
            "ddim:12",
            "--out",
            str(tmp_path),
            *sweep_passthrough(tiny_model, tiny_clip, '["a red circle", "a blue star", "a cross"]'),
        ]
    )
    assert [(r["scheduler"], r["guidance_scale"]) for r in rows] == [
        ("ddim", 1),
        ("ddim", 4),
        ("euler", 1),
        ("euler", 4),
    ]
    table = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert len(table) == 4 and all(int(r["n"]) == 3 for r in table)
    assert all(0 < float(r["max_abs_diff_to_ref"]) <= 1 for r in table)  # 3 steps differ from 12 steps
    for row in rows:  # the CLIPScore difference to the reference, paired by prompt and seed
        reference = tmp_path / f"reference-ddim-12-g{row['guidance_scale']:g}"
        scores = [
            {r["seed"]: r["clip_score"] for r in manifest(f, "results.jsonl")} for f in (reference, row["folder"])
        ]
        diff = np.array([scores[1][seed] - scores[0][seed] for seed in scores[0]])
        assert row["clip_score_paired_delta"] == diff.mean() and row["n_paired"] == 3
        assert row["paired_p"] == pytest.approx(exact_wilcoxon_p(diff), rel=1e-12)
        # With 3 pairs, each extreme is a bootstrap resample's mean with probability (1/3)³ = 3.7% > 2.5%:
        # the 95% percentile interval is [min, max] of the differences.
        interval = (row["paired_ci_low"], row["paired_ci_high"])
        assert interval == pytest.approx((diff.min(), diff.max()), rel=1e-12, abs=1e-12)
    for name in ("sweep.md", "clip_vs_guidance.png", "grid.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert live_modules() == before  # every setting released its module (and the components and CLIP it held)


def test_sweep_compares_fast_mode_with_the_exact_reference(tiny_model, tiny_clip, tmp_path, monkeypatch):
    compile_without_codegen(monkeypatch)
    rows = sweep(
        [
            "--guidance",
            "4",
            "--steps",
            "3",
            "--modes",
            "exact",
            "fast",
            "--reference",
            "ddim:3",
            "--out",
            str(tmp_path),
            *sweep_passthrough(tiny_model, tiny_clip, '["a red circle", "a blue star"]'),
        ]
    )
    assert [r["mode"] for r in rows] == ["exact", "fast"]
    assert rows[0]["max_abs_diff_to_ref"] == 0  # the exact run is the reference setting
    assert rows[1]["folder"].endswith("-fast") and rows[1]["max_abs_diff_to_ref"] <= 1 / 255
    settings = [json.loads((Path(r["folder"]) / "summary.json").read_text())["settings"] for r in rows]
    assert settings[0]["fast"] is False and settings[1]["fast"] is True


def test_benchmark_runs_and_our_images_equal_the_pipelines(tiny_model, tmp_path, capsys, monkeypatch):
    compile_without_codegen(monkeypatch)
    args = ["--model", tiny_model, "--height", "32", "--steps", "3", "--batch", "2", "--repeats", "1", "--threads", "1"]
    assert run_module("ldm_lightning.lab.benchmark", [*args, "--fast", "--out", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    [table] = parse_tables(stdout)
    rows = {r["variant"]: r for r in table["rows"]}
    assert list(rows) == [
        "pipeline",
        "ours, bare loop",
        "ours, Trainer.predict",
        "ours, fast (bare loop)",
        "ours, fast, Trainer.predict",
    ]
    assert float(rows["ours, bare loop"]["max abs diff vs pipeline"]) <= 1e-5
    assert float(rows["ours, fast (bare loop)"]["max abs diff vs pipeline"]) <= 1e-4  # compiled: same to rounding
    assert "fast mode on cpu: " in stdout and "fast mode's first call (compilation) took" in stdout
    assert rows["ours, Trainer.predict"]["max abs diff vs pipeline"] == "–"  # not measured: no image tensor
    for name in ("benchmark.md", "benchmark.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert list(tmp_path.glob("events.out.tfevents.*"))
    # The printed table and the figures handed to the report are the same numbers.
    [data] = json.loads((tmp_path / "benchmark.json").read_text())
    for figures in data["rows"]:
        printed = rows[figures["variant"]]
        assert printed["× pipeline time"] == f"{figures['× pipeline time']:.3f}"
        assert printed["s/image"] == f"{figures['s/image']:.4f}"


def test_report_reads_the_gpu_log_in_the_docs():
    text = (ROOT / "docs/results/gpu-benchmark-h200.md").read_text()
    tables = parse_tables(text)
    # One table per "batch N × M batches" line the log holds, in its order.
    assert [t["batch"] for t in tables] == [int(n) for n in re.findall(r"^batch (\d+) × \d+ batches", text, re.M)]
    assert len(tables) >= 2 and all(t["device"] == "cuda" and t["dtype"] in ("fp16", "bf16") for t in tables)
    for table in tables:
        rows = {row["variant"]: row for row in table["rows"]}
        pipeline = float(rows["pipeline"]["s/image"])
        for row in rows.values():
            # The columns land under their own names: the derived ones agree with s/image to the printed digits.
            seconds = float(row["s/image"])
            assert float(row["× pipeline time"]) == pytest.approx(seconds / pipeline, abs=1.5e-3), row
            assert float(row["images/s"]) == pytest.approx(1 / seconds, abs=6e-3), row


def test_each_sweep_run_starts_from_fresh_cpu_and_gpu_peaks(tiny_model, tiny_clip, tmp_path, monkeypatch):
    from lightning import Trainer

    from ldm_lightning import memory
    from ldm_lightning.lab.sweep import run_test

    events = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *args, **kwargs: events.append("gpu peak reset"))
    monkeypatch.setattr(memory, "reset_peak_rss", lambda: events.append("cpu peak reset") or True)
    monkeypatch.setattr(Trainer, "test", lambda self, *args, **kwargs: events.append("test"))
    passthrough = [
        *cli_args(None, model=tiny_model, clip=tiny_clip, prompts='["a red circle"]'),
        "--trainer.accelerator=cpu",
    ]
    for guidance in (1.0, 4.0):
        run_test(tmp_path / f"g{guidance:g}", "ddim", 2, guidance, "32-true", False, passthrough)
    assert events == ["cpu peak reset", "gpu peak reset", "test"] * 2
