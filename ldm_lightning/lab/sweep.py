"""Sweeps: one `test` run per setting (guidance × scheduler × steps × precision × mode), then a table and a plot.

    python -m ldm_lightning.lab.sweep --guidance 1 2 3 5 7.5 --schedulers ddim dpmpp_2m_karras \\
        --out outputs/sweep -- --config configs/tiny-shapes.yaml

Arguments after `--` go to every `test` run. Each run is an ordinary, resumable `test` run in its own
folder; `--reference SCHEDULER:STEPS[:PRECISION]` adds one more run and reports each run's pixel
distance to it (e.g. `ddim:200` for a many-step reference, or `ddim:25:32-true` for precision) and
its CLIPScore difference paired row by row (same prompt and seed; `python -m ldm_lightning.compare`): mean,
95% bootstrap interval, Wilcoxon p-value;
`--modes exact fast` runs every setting also in fast mode (`model.fast`), against the exact reference.
Writes `sweep.csv`, `sweep.md`, `clip_vs_guidance.png`, `grid.png` (rows: schedulers, columns: the
other settings; the first prompt's image) and logs table and plot to TensorBoard. With a distribution
metric on (`-- --model.metrics [clip_score,fd_clip] --data.reference DIR`) the table gains its columns
and `fid_vs_clip.png` plots it against CLIPScore, one labelled point per guidance scale: the trade-off
curve of SD v1.4's model card.
"""

import argparse
import csv
import gc
import itertools
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import make_image_grid
from PIL import Image

from ldm_lightning.cli import make_cli, parse_config
from ldm_lightning.console import quiet_known_noise
from ldm_lightning.evaluation.compare import compare
from ldm_lightning.memory import reset_peak_memory
from ldm_lightning.run_folder.files import read_jsonl

# The metric the trade-off plot shows when --quality-metric is not given: the first one a run reports.
TRADEOFF_ORDER = ("fid", "fd_dinov2", "fd_clip", "cmmd", "kid_mean")


def run_test(
    out: Path, scheduler: str, steps: int, guidance: float, precision: str, fast: bool, passthrough: list[str]
) -> Path:
    """One ordinary, resumable `test` run of the command line `passthrough` with these settings; returns its folder
    (`<out>-N` when `out` holds another run). Built by the command line itself (`make_cli(..., stage="test")`),
    which hands back the module, the data and a Trainer with its run folder."""
    args = [
        *passthrough,
        f"--model.sampling.scheduler={scheduler}",
        f"--model.sampling.num_inference_steps={steps}",
        f"--model.guidance.guidance_scale={guidance}",
        f"--model.sampling.fast={str(fast).lower()}",
        f"--trainer.precision={precision}",
        "--trainer.logger=false",
        f"--output_dir={out}",
    ]
    with warnings.catch_warnings():  # the sweep's own command line is not meant for the CLI
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        cli = make_cli(args, stage="test")
    reset_peak_memory()  # each in-process run reports its own peak, CPU and GPU
    if fast:  # a fresh compiler: many fast runs in one process would otherwise hit torch.compile's recompile limit
        torch._dynamo.reset()
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    folder = cli.run_dir
    # jsonargparse's context keeps the last parser, which refers back to the CLI: let go of what it built.
    cli.model = cli.datamodule = cli.trainer = cli.config_init = None
    del cli
    gc.collect()
    return folder


def images_of(folder: Path) -> dict[int, np.ndarray]:
    """The run's images by prompt index, as float arrays in [0, 1]."""
    rows = read_jsonl(folder / "results.jsonl")
    return {
        r["index"]: np.asarray(Image.open(folder / r["image"]).convert("RGB"), dtype=np.float64) / 255 for r in rows
    }


def distance(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> tuple[float, float]:
    """Max abs pixel difference and PSNR (dB) over the images both runs share."""
    keys = sorted(set(a) & set(b))
    diff = np.stack([a[k] - b[k] for k in keys])
    mse = float((diff**2).mean())
    return float(np.abs(diff).max()), (math.inf if mse == 0 else 10 * math.log10(1 / mse))


def plot(rows: list[dict], path: Path):
    """CLIPScore against guidance scale, one line per scheduler/steps/precision/mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    key = lambda r: (r["scheduler"], r["steps"], r["precision"], r["mode"])  # noqa: E731
    for (scheduler, steps, precision, mode), group in itertools.groupby(sorted(rows, key=key), key=key):
        group = sorted(group, key=lambda r: r["guidance_scale"])
        x = [r["guidance_scale"] for r in group]
        ax.errorbar(
            x,
            [r["clip_score"] for r in group],
            marker="o",
            capsize=3,
            yerr=np.array([[r["clip_score"] - r["ci_low"], r["ci_high"] - r["clip_score"]] for r in group]).T,
            label=f"{scheduler}, {steps} steps, {precision}" + (", fast" if mode == "fast" else ""),
        )
    ax.set_xlabel("guidance scale")
    ax.set_ylabel("CLIPScore (mean, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def plot_tradeoff(rows: list[dict], metric: str, path: Path):
    """A distribution metric (y) against CLIPScore (x), one line per scheduler/steps/precision/mode.

    Each point is labelled with its guidance scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    key = lambda r: (r["scheduler"], r["steps"], r["precision"], r["mode"])  # noqa: E731
    for (scheduler, steps, precision, mode), group in itertools.groupby(sorted(rows, key=key), key=key):
        group = sorted(group, key=lambda r: r["guidance_scale"])
        x, y = [r["clip_score"] for r in group], [r[metric] for r in group]
        label = f"{scheduler}, {steps} steps, {precision}" + (", fast" if mode == "fast" else "")
        ax.plot(x, y, marker="o", label=label)
        for r, xi, yi in zip(group, x, y):
            ax.annotate(f"{r['guidance_scale']:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    n = f"N = {rows[0].get('n_generated')} generated, {rows[0].get('n_reference')} reference"
    ax.set_xlabel("CLIPScore (mean)")
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.set_title(f"{metric} vs CLIPScore; points labelled by guidance scale\n{n}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def grid(rows: list[dict], path: Path) -> None:
    """First prompt's image of every run: one row per scheduler (every scheduler has the same runs)."""
    schedulers = list(dict.fromkeys(r["scheduler"] for r in rows))
    images = [
        Image.open(Path(r["folder"]) / read_jsonl(Path(r["folder"]) / "results.jsonl")[0]["image"]).convert("RGB")
        for s in schedulers
        for r in rows
        if r["scheduler"] == s
    ]
    make_image_grid(images, rows=len(schedulers), cols=len(images) // len(schedulers)).save(path)


def write_table(rows: list[dict], out: Path) -> None:
    """`sweep.csv` and `sweep.md` with one line per run."""
    fields = [k for k in rows[0] if k != "folder"] + ["folder"]
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in fields) + " |" for r in rows]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description="Sweep `test` over settings; table, plot and grid.")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0, 7.5])
    parser.add_argument("--schedulers", nargs="+", default=["ddim"])
    parser.add_argument("--steps", type=int, nargs="+", default=[25])
    parser.add_argument("--precisions", nargs="+", default=["32-true"])
    parser.add_argument("--modes", nargs="+", choices=["exact", "fast"], default=["exact"])
    parser.add_argument("--reference", default=None, help="SCHEDULER:STEPS[:PRECISION] run to measure distances to")
    parser.add_argument("--out", type=Path, default=Path("outputs/sweep"))
    parser.add_argument(
        "--quality-metric", choices=TRADEOFF_ORDER, default=None, help="y of fid_vs_clip.png (default: first reported)"
    )
    args, passthrough = parser.parse_known_args(argv)
    quiet_known_noise()  # here, not inside each run's warning filters, which are dropped with the run
    passthrough = [a for a in passthrough if a != "--"]
    with warnings.catch_warnings():  # the sweep's own command line is not meant for the CLI
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        parse_config(passthrough)  # a mistake in the shared settings fails before the first run
    args.out.mkdir(parents=True, exist_ok=True)
    references = {}  # guidance scale -> the reference run's (folder, images) at that scale
    if args.reference:
        scheduler, steps, *precision = args.reference.split(":")
        for guidance in args.guidance:
            folder = run_test(
                args.out / f"reference-{scheduler}-{steps}-g{guidance:g}",
                scheduler,
                int(steps),
                guidance,
                precision[0] if precision else args.precisions[0],
                False,
                passthrough,
            )
            references[guidance] = (folder, images_of(folder))
    rows = []
    for scheduler, steps, guidance, precision, mode in itertools.product(
        args.schedulers, args.steps, args.guidance, args.precisions, args.modes
    ):
        folder = run_test(
            args.out / (f"{scheduler}-{steps}-g{guidance:g}-{precision}" + ("-fast" if mode == "fast" else "")),
            scheduler,
            steps,
            guidance,
            precision,
            mode == "fast",
            passthrough,
        )
        summary = json.loads((folder / "summary.json").read_text())
        row = {
            "scheduler": scheduler,
            "steps": steps,
            "guidance_scale": guidance,
            "precision": precision,
            "mode": mode,
            "clip_score": summary["clip_score_mean"],
            "ci_low": summary["clip_score_ci95"][0],
            "ci_high": summary["clip_score_ci95"][1],
            "n": summary["n"],
            "seconds_per_image": summary["seconds_per_image"],
            "peak_memory_mb": summary["peak_memory_mb"],
            **{
                k: summary[k]
                for k in (*summary.get("set_metric_keys", []), "n_generated", "n_reference")
                if k in summary
            },
        }
        if references:
            ref_folder, ref_images = references[guidance]
            row["max_abs_diff_to_ref"], row["psnr_to_ref_db"] = distance(images_of(folder), ref_images)
            report, _ = compare([ref_folder, folder])
            paired = report["pairs"][0]  # this run minus the reference, on the rows both scored
            row["clip_score_paired_delta"] = paired["mean_diff"]
            row["paired_ci_low"], row["paired_ci_high"] = paired["ci95_diff"]
            row["paired_p"] = paired["p_wilcoxon"]
            row["n_paired"] = paired["n"]
        rows.append({**row, "folder": str(folder)})
    write_table(rows, args.out)
    figure = plot(rows, args.out / "clip_vs_guidance.png")
    grid(rows, args.out / "grid.png")
    quality = args.quality_metric or next((m for m in TRADEOFF_ORDER if m in rows[0]), None)
    tradeoff = plot_tradeoff(rows, quality, args.out / "fid_vs_clip.png") if quality in rows[0] else None
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(args.out / "tensorboard")) as tb:
        tb.add_figure("sweep/clip_vs_guidance", figure)
        if tradeoff is not None:
            tb.add_figure("sweep/fid_vs_clip", tradeoff)
        tb.add_text("sweep/table", (args.out / "sweep.md").read_text())
    print((args.out / "sweep.md").read_text())
    return rows


if __name__ == "__main__":
    main()
