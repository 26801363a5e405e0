"""What distribution metrics cost in `test`: the same run with `[clip_score]` and with more metrics, alternated.

    python -m ldm_lightning.lab.metric_cost --reference outputs/shapes-reference --metrics clip_score fd_clip \\
        --repeats 3 --out outputs/metric_cost -- --data.prompts configs/prompts/shapes-48.txt

Each repeat runs both variants in fresh folders (alternating which goes first), after one untimed run that
fills the reference-feature cache, as the first run of a sweep does. Prints the median wall time of the
whole `test` call and of its steady-state seconds per image, and their ratios.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from ldm_lightning.cli import main as cli_main


def timed_test(out: Path, metrics: list[str], reference: str, passthrough: list[str]) -> tuple[float, dict]:
    """Wall seconds of one `test` run and its summary."""
    args = ["test", *passthrough, f"--model.metrics=[{','.join(metrics)}]", f"--output_dir={out}"]
    if metrics != ["clip_score"]:
        args.append(f"--data.reference={reference}")
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when given both
    start = time.perf_counter()
    try:
        cli_main(args)
    except SystemExit as exit_:
        if exit_.code:
            raise
    finally:
        sys.argv = argv
    return time.perf_counter() - start, json.loads((out / "summary.json").read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Time `test` with and without distribution metrics.")
    parser.add_argument("--reference", required=True, help="reference images (data.reference)")
    parser.add_argument("--metrics", nargs="+", default=["clip_score", "fd_clip"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("outputs/metric_cost"))
    args, passthrough = parser.parse_known_args(argv)
    passthrough = [a for a in passthrough if a != "--"] + ["--trainer.enable_progress_bar=false"]
    variants = {"clip_score": ["clip_score"], "+".join(args.metrics): args.metrics}
    timed_test(args.out / "warm-cache", args.metrics, args.reference, passthrough)
    wall = {name: [] for name in variants}
    per_image = {name: [] for name in variants}
    for repeat in range(args.repeats):
        order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for name in order:
            seconds, summary = timed_test(args.out / f"{name}-{repeat}", variants[name], args.reference, passthrough)
            wall[name].append(seconds)
            per_image[name].append(summary["seconds_per_image"])
    base, more = list(variants)
    result = {
        name: {"wall_s": statistics.median(wall[name]), "seconds_per_image": statistics.median(per_image[name])}
        for name in variants
    }
    result["ratio_wall"] = result[more]["wall_s"] / result[base]["wall_s"]
    result["ratio_seconds_per_image"] = result[more]["seconds_per_image"] / result[base]["seconds_per_image"]
    lines = ["| metrics | wall s (median) | s/image (median) |", "|---|---|---|"]
    lines += [f"| {n} | {result[n]['wall_s']:.2f} | {result[n]['seconds_per_image']:.4f} |" for n in variants]
    lines.append(f"\nratio: {result['ratio_wall']:.3f} (wall), {result['ratio_seconds_per_image']:.3f} (s/image)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metric_cost.json").write_text(json.dumps({**result, "wall": wall, "per_image": per_image}, indent=2))
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
