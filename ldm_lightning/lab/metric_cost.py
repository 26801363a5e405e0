"""What metrics cost in `test`: the same run with `[clip_score]` and with more metrics, alternated.

One metric set against CLIPScore alone:

    python -m ldm_lightning.lab.metric_cost --reference outputs/shapes-reference --metrics clip_score fd_clip \\
        --repeats 3 --out outputs/metric_cost -- --data.prompts configs/prompts/shapes-48.txt

Each metric on its own against CLIPScore alone, with tiny random networks of the real classes standing in for
weights that are not on disk (`--stand-ins`: PickScore's CLIP, HPS v2's OpenCLIP checkpoint, the aesthetic head,
a Mask2Former, the FID Inception, DINOv2):

    python -m ldm_lightning.lab.metric_cost --reference outputs/shapes-reference --stand-ins \\
        --each pick_score hpsv2 aesthetic geneval geneval-mask2former fid kid cmmd fd_dinov2 fd_clip \\
        --repeats 3 --out outputs/metric_cost -- --data.prompts configs/prompts/shapes-geneval.jsonl --data.limit 16

Each repeat runs every variant in a fresh folder (forward order on even repeats, reversed on odd ones), after
one untimed run that fills the reference-feature cache, as the first run of a sweep does. For each variant it
prints the median wall time of the whole `test` call, the median steady-state seconds per image, the run's
CPU seconds and the extra CPU seconds per image over CLIPScore alone, and the 1-minute load average when the
runs started: on shared cores wall time moves with the other work, while a one-thread run's CPU seconds
are its own work. With `--each` it also times the metric's own step alone, on a batch of the run's
images: the scorer call or the feature extraction that `test_step` adds, which the whole run's noise hides
when the networks are small.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ldm_lightning.cli import main as cli_main

BASELINE = "clip_score"
# Variant names beyond the metric names: GenEval with a (tiny) Mask2Former detector instead of the pixel judge.
VARIANT_METRIC = {"geneval-mask2former": "geneval"}
SET_NAMES = ("fid", "kid", "cmmd", "fd_dinov2", "fd_clip")
SET_CLASSES = ("FID", "KID", "CMMD", "FDDinov2", "FDClip")


def build(metric):
    """A metric object from `model.metrics`' form (a built-in name, or a class path with init args)."""
    if isinstance(metric, str):
        return metric
    from importlib import import_module

    module, _, name = metric["class_path"].rpartition(".")
    return getattr(import_module(module), name)(**metric["init_args"])


def build_stand_ins(folder: Path) -> dict[str, dict[str, Any]]:
    """Tiny random networks of each metric's real class, saved under `folder`: each variant's metric as
    `model.metrics` takes it (class path and init args).

    The embedded tiny CLIP (a `CLIPModel`, as PickScore and the CLIPs of HPS v2 and the aesthetic predictor are)
    is PickScore, the aesthetic predictor's CLIP and GenEval's colour CLIP, and its weights renamed to
    OpenCLIP's layout are the HPS v2 checkpoint.
    """
    from transformers import CLIPConfig

    from ldm_lightning.evaluation.clip_score import EMBEDDED_CLIP
    from ldm_lightning.testing import (
        build_tiny_aesthetic,
        build_tiny_dinov2,
        build_tiny_hps,
        build_tiny_inception,
        build_tiny_mask2former,
    )

    clip = str(EMBEDDED_CLIP["tiny-clip"])
    embed_dim = CLIPConfig.from_pretrained(clip).projection_dim
    inception = str(build_tiny_inception(folder / "inception.pt"))
    specs = {
        "pick_score": ("PickScore", {"model": clip}),
        "hpsv2": ("HPSv2", {"checkpoint": str(build_tiny_hps(folder / "hps.pt", clip)), "clip": clip}),
        "aesthetic": (
            "Aesthetic",
            {"weights": str(build_tiny_aesthetic(folder / "aesthetic.pth", embed_dim)), "clip": clip},
        ),
        "geneval": ("GenEval", {"detector": "shapes-judge"}),
        "geneval-mask2former": (
            "GenEval",
            {"detector": str(build_tiny_mask2former(folder / "mask2former")), "clip": clip},
        ),
        "fid": ("FID", {"inception_weights": inception}),
        "kid": ("KID", {"inception_weights": inception}),
        "fd_dinov2": ("FDDinov2", {"model": str(build_tiny_dinov2(folder / "dinov2"))}),
    }
    return {
        name: {"class_path": f"ldm_lightning.evaluation.metrics.{cls}", "init_args": init}
        for name, (cls, init) in specs.items()
    }


def is_set_metric(name: str) -> bool:
    from ldm_lightning.evaluation.metrics import BUILT_IN, SetMetric

    return issubclass(BUILT_IN[VARIANT_METRIC.get(name, name)], SetMetric)


def metric_specs(metrics: list[str], stand_ins: dict[str, dict[str, Any]]) -> list:
    """`model.metrics` for these variant names: a stand-in's spec where there is one, else the built-in name."""
    return [stand_ins.get(m, VARIANT_METRIC.get(m, m)) for m in metrics]


def timed_test(out: Path, metrics: list, reference: str, passthrough: list[str]) -> tuple[float, float, dict]:
    """Wall seconds and CPU seconds (this process, all its threads) of one `test` run of `metrics` (as
    `model.metrics` takes them), and its summary."""
    args = ["test", *passthrough, f"--model.metrics={json.dumps(metrics)}", f"--output_dir={out}"]
    if any(isinstance(m, dict) and m["class_path"].rsplit(".", 1)[1] in SET_CLASSES or m in SET_NAMES for m in metrics):
        args.append(f"--data.reference={reference}")
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when given both
    start, cpu = time.perf_counter(), time.process_time()
    try:
        cli_main(args)
    except SystemExit as exit_:
        if exit_.code:
            raise
    finally:
        sys.argv = argv
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall, cpu, json.loads((out / "summary.json").read_text())


def step_seconds(metric, folder: Path, batch_size: int = 8, calls: int = 10) -> dict[str, float]:
    """Seconds per image of the step `metric` (as `model.metrics` takes it) adds to `test_step`, on the first batch
    of images in run `folder`: its `score` for a per-image metric, the feature extraction for a set metric.
    Medians of `calls` timed calls after two untimed ones, wall and CPU seconds."""
    from ldm_lightning.evaluation.metrics import SetMetric
    from ldm_lightning.evaluation.scoring import Scoring, resolve_metrics

    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()][:batch_size]
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(folder / r["image"]).convert("RGB"))) for r in rows])
    pixels = pixels.permute(0, 3, 1, 2).contiguous()
    prompts = [r["prompt"] for r in rows]
    metrics = resolve_metrics([build(metric)])
    scoring = Scoring(metrics, "tiny-clip")
    scoring.load()
    timed = next(m for m in metrics if m.name == (metric if isinstance(metric, str) else metrics[-1].name))
    if isinstance(timed, SetMetric):
        step = lambda: scoring.features(pixels)  # noqa: E731
    else:
        step = lambda: timed.score(pixels, prompts, rows)  # noqa: E731
    wall, cpu = [], []
    with torch.no_grad():
        for call in range(calls + 2):
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            if call >= 2:
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - cpu_start)
    return {"wall": statistics.median(wall) / len(rows), "cpu": statistics.median(cpu) / len(rows)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Time `test` with and without more metrics.")
    parser.add_argument("--reference", required=True, help="reference images (data.reference)")
    parser.add_argument("--metrics", nargs="+", default=["clip_score", "fd_clip"], help="one metric set to compare")
    parser.add_argument("--each", nargs="+", help="compare each of these metrics on its own (overrides --metrics)")
    parser.add_argument("--stand-ins", action="store_true", help="tiny random networks for weights not on disk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("outputs/metric_cost"))
    args, passthrough = parser.parse_known_args(argv)
    passthrough = [a for a in passthrough if a != "--"] + ["--trainer.enable_progress_bar=false"]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    stand_ins = build_stand_ins(args.out / "stand-ins") if args.stand_ins else {}
    if args.each:
        variants = {BASELINE: [BASELINE]} | {name: metric_specs([BASELINE, name], stand_ins) for name in args.each}
    else:
        variants = {BASELINE: [BASELINE], "+".join(args.metrics): metric_specs(args.metrics, stand_ins)}

    # Untimed: one run with every set metric fills each reference-feature cache, as a sweep's first run does.
    names = [name for variant in variants for name in variant.split("+")]
    warm = metric_specs(list(dict.fromkeys([BASELINE, *(n for n in names if is_set_metric(n))])), stand_ins)
    timed_test(args.out / "warm", warm, args.reference, passthrough)
    records: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for name in order:
            load = os.getloadavg()[0]
            folder = args.out / f"{name}-{repeat}"
            wall, cpu, summary = timed_test(folder, variants[name], args.reference, passthrough)
            records[name].append(
                {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "images": summary["n_rows"],
                    "seconds_per_image": summary["seconds_per_image"],
                    "load": load,
                }
            )
    result = report(records, variants)
    if args.each:
        for name in variants:
            step = step_seconds(variants[name][-1], args.out / "warm")
            result["variants"][name]["step_seconds_per_image"] = step["wall"]
            result["variants"][name]["step_cpu_seconds_per_image"] = step["cpu"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metric_cost.json").write_text(json.dumps({**result, "runs": records}, indent=2))
    print(markdown(result))
    return result


def report(records: dict[str, list[dict[str, float]]], variants: dict[str, list[str]]) -> dict[str, Any]:
    """Medians per variant, and what each adds to CLIPScore alone (differences and ratios of medians).

    Wall time on shared cores moves with the other work there; the CPU seconds of a one-thread run are the
    work done, so `added_cpu_seconds_per_image` (the run's extra CPU seconds over its images: loading, the
    per-image step and the end-of-run distances together) is the steadier figure."""
    keys = ("wall_s", "cpu_s", "images", "seconds_per_image", "load")
    med = {name: {key: statistics.median(r[key] for r in runs) for key in keys} for name, runs in records.items()}
    base = med[BASELINE]
    for name, m in med.items():
        m["metrics"] = variants[name]
        m["added_seconds_per_image"] = m["seconds_per_image"] - base["seconds_per_image"]
        m["ratio_seconds_per_image"] = m["seconds_per_image"] / base["seconds_per_image"]
        m["ratio_wall"] = m["wall_s"] / base["wall_s"]
        m["added_cpu_seconds_per_image"] = (m["cpu_s"] - base["cpu_s"]) / m["images"]
        m["ratio_cpu"] = m["cpu_s"] / base["cpu_s"]
        spread = [r["seconds_per_image"] for r in records[name]]
        m["seconds_per_image_range"] = [min(spread), max(spread)]
    return {"variants": med}


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table, one line per variant."""
    lines = [
        "| variant | whole run, s | s/image (range) | ratio s/image | run CPU s | added CPU s/image | ratio CPU "
        "| step alone, CPU s/image | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in result["variants"].items():
        low, high = m["seconds_per_image_range"]
        step = m.get("step_cpu_seconds_per_image")
        lines.append(
            f"| {name} | {m['wall_s']:.2f} | {m['seconds_per_image']:.3f} ({low:.3f}–{high:.3f}) "
            f"| {m['ratio_seconds_per_image']:.3f} | {m['cpu_s']:.2f} | {m['added_cpu_seconds_per_image']:+.4f} "
            f"| {m['ratio_cpu']:.3f} | {'' if step is None else f'{step:.5f}'} | {m['load']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
