"""Paired comparison of `test` runs: the same prompts and seeds, scored row by row.

    python -m ldm_lightning.compare RUN_A RUN_B [RUN_C …] [--metric clip_score] [--by Category] [--out DIR]

Runs share prompt rows and seeds, so each row of run B has its twin in run A: the difference of
their scores removes what the prompt and the seed contribute, and the mean of those differences
has a far narrower interval than either run's mean. Rows are matched by (prompt, negative prompt,
seed); with several runs, each is compared with the first, and the p-values are Holm-corrected.
Only the run folders are read: no model is loaded.
"""

import argparse
import hashlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ldm_lightning.errors import UserError
from ldm_lightning.evaluation.groups import group_key
from ldm_lightning.evaluation.stats import holm, paired
from ldm_lightning.run_folder.files import RESULTS, RUN_FILE, SUMMARY, atomic_write, choose_run_dir, read_jsonl

KEY = ("prompt", "negative_prompt", "seed")
EXTREMES = 4  # rows shown in each direction in the side-by-side picture


@dataclass
class Run:
    """One `test` run folder: its scored rows by key, its summary and settings."""

    folder: Path
    name: str
    rows: dict[tuple, dict[str, Any]]
    summary: dict[str, Any]
    settings: dict[str, Any]


def load_run(folder: str | Path, metric: str, by: list[str]) -> Run:
    """Read a run folder, checking that it holds scores of `metric`, the `by` columns and unique keys."""
    folder = Path(folder)
    if not (folder / RUN_FILE).is_file():
        raise UserError(
            f"{folder}: not a run folder (no {RUN_FILE}); give folders written by `python -m ldm_lightning test`"
        )
    rows = read_jsonl(folder / RESULTS)
    if not rows:
        raise UserError(
            f"{folder}: no scores ({RESULTS} is missing or empty; a predict run has none); "
            "run `python -m ldm_lightning test` with the same settings"
        )
    if not any(metric in r for r in rows):
        numeric = sorted({k for r in rows for k, v in r.items() if isinstance(v, float)})
        raise UserError(f"--metric: {folder} has no per-row {metric!r} (per-row numbers there: {', '.join(numeric)})")
    if any(isinstance(r.get(metric), (str, bool, list, dict)) for r in rows):
        raise UserError(f"--metric: {metric!r} in {folder} is not a number; give a numeric per-row metric")
    for column in by:
        if any(column not in r for r in rows):
            columns = list(dict.fromkeys(k for r in rows for k in r))
            raise UserError(f"--by: {folder} has no column {column!r} in every row (columns: {', '.join(columns)})")
    keyed = {}
    for r in rows:
        key = tuple(r[k] for k in KEY)
        if key in keyed:
            raise UserError(
                f"{folder}: two rows share (prompt, negative_prompt, seed) = {key!r}; "
                "rows are paired by that key, so each must appear once (give repeated prompts different seeds)"
            )
        keyed[key] = r
    run = json.loads((folder / RUN_FILE).read_text())
    summary = json.loads((folder / SUMMARY).read_text()) if (folder / SUMMARY).is_file() else {}
    return Run(folder, folder.name, keyed, summary, run.get("settings", summary.get("settings", {})))


@dataclass
class Pairing:
    """Run B's rows matched with run A's: the shared keys whose rows both have a score."""

    a: Run
    b: Run
    keys: list[tuple]
    n_matched: int  # keys in both runs, scored or not

    def values(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        a = np.array([self.a.rows[k][metric] for k in self.keys], dtype=np.float64)
        b = np.array([self.b.rows[k][metric] for k in self.keys], dtype=np.float64)
        return a, b


def pair(a: Run, b: Run, metric: str) -> Pairing:
    """Match rows by (prompt, negative_prompt, seed); rows left out of a mean (None) drop out of the pairs."""
    shared = [k for k in a.rows if k in b.rows]
    scored = [k for k in shared if a.rows[k].get(metric) is not None and b.rows[k].get(metric) is not None]
    if not scored:
        raise UserError(
            f"{b.folder}: no scored row shares (prompt, negative_prompt, seed) with {a.folder} "
            f"({len(a.rows)} and {len(b.rows)} rows, {len(shared)} matched); compare runs of the same prompts and seeds"
        )
    return Pairing(a, b, scored, len(shared))


def check_comparable(runs: list[Run], force: bool) -> list[str]:
    """Refuse runs scored by different CLIPs (unless forced); warn about different models. Returns warnings."""
    first, warnings = runs[0], []
    for run in runs[1:]:
        clips = first.settings.get("clip_model"), run.settings.get("clip_model")
        if clips[0] != clips[1]:
            message = (
                f"{run.folder}: scored by CLIP {clips[1]!r}, {first.folder} by {clips[0]!r}; a paired difference "
                "across scoring CLIPs measures the CLIPs, not the images"
            )
            if not force:
                raise UserError(message + "; score both with the same CLIP (or pass --force)")
            warnings.append(message)
        models = first.settings.get("model"), run.settings.get("model")
        if models[0] != models[1]:
            warnings.append(
                f"{run.folder}: model {models[1]!r}, {first.folder}: {models[0]!r} (a comparison of models)"
            )
    return warnings


def compare(
    folders: list[str | Path], metric: str = "clip_score", by: list[str] | None = None, force: bool = False
) -> tuple[dict[str, Any], list[Pairing]]:
    """Every run against the first: the report (as written to `compare.json`) and the pairings behind it."""
    by = by or []
    if len(folders) < 2:
        raise UserError("runs: give at least two run folders to compare")
    runs = [load_run(f, metric, by) for f in folders]
    names = [r.name for r in runs]
    for run in runs:  # two folders of the same name (outputs/a/run, outputs/b/run) go by their paths
        if names.count(run.name) > 1:
            run.name = str(run.folder)
    warnings = check_comparable(runs, force)
    pairings = [pair(runs[0], run, metric) for run in runs[1:]]
    pairs = []
    for p in pairings:
        entry = {"a": p.a.name, "b": p.b.name, "n_a": len(p.a.rows), "n_b": len(p.b.rows), "n_matched": p.n_matched}
        entry.update(paired(*p.values(metric)))
        entry["groups"] = {column: grouped(p, metric, column) for column in by}
        pairs.append(entry)
    for entry, p_holm in zip(pairs, holm([e["p_wilcoxon"] for e in pairs])):
        entry["p_holm"] = p_holm
    for column in by:  # within each group, the family is the runs compared with the first
        for value in {v for e in pairs for v in e["groups"][column]}:
            family = [e["groups"][column][value] for e in pairs if value in e["groups"][column]]
            for stats, p_holm in zip(family, holm([s["p_wilcoxon"] for s in family])):
                stats["p_holm"] = p_holm
    report = {
        "metric": metric,
        "key": list(KEY),
        "by": by,
        "runs": [
            {"name": r.name, "folder": str(r.folder), "n_rows": len(r.rows), "settings": r.settings} for r in runs
        ],
        "warnings": warnings,
        "pairs": pairs,
        "summary_metrics": summary_metrics(runs),
    }
    return report, pairings


def grouped(p: Pairing, metric: str, column: str) -> dict[str, dict[str, Any]]:
    """The paired comparison within each value of a column (taken from run A's rows)."""
    a, b = p.values(metric)
    values = np.array([group_key(p.a.rows[k][column]) for k in p.keys])
    return {v: paired(a[values == v], b[values == v]) for v in sorted(set(values))}


def summary_metrics(runs: list[Run]) -> dict[str, list[float]]:
    """Numbers every run's `summary.json` holds at its top level (means, FID, n, seconds…), side by side."""
    shared = [k for k, v in runs[0].summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {
        k: [r.summary[k] for r in runs] for k in shared if all(isinstance(r.summary.get(k), (int, float)) for r in runs)
    }


# ----- writing: compare.json, compare.md, pictures, TensorBoard -----


def fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"


def markdown(report: dict[str, Any], extremes: list[list[tuple]] | None = None) -> str:
    """The report as markdown: pairs, groups, summary metrics, warnings."""
    m = report["metric"]
    lines = [
        f"# {m}: paired by ({', '.join(report['key'])})",
        "",
        "B − A per matched row; 95% bootstrap intervals (2000 resamples, seed 0); Wilcoxon signed-rank, two-sided; "
        "Holm-corrected over the runs compared with the first.",
        "",
        "| A | B | rows A / B / matched | n | mean A (95% CI) | mean B (95% CI) | mean B − A (95% CI) | p | Holm p "
        "| B higher / tie / lower |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["pairs"]:
        lines.append(
            f"| {e['a']} | {e['b']} | {e['n_a']} / {e['n_b']} / {e['n_matched']} | {e['n']} | {interval(e, 'a')} "
            f"| {interval(e, 'b')} | {interval(e, 'diff', sign=True)} | {fmt(e['p_wilcoxon'])} | {fmt(e['p_holm'])} "
            f"| {e['wins']} / {e['ties']} / {e['losses']} |"
        )
    for column in report["by"]:
        lines += [
            "",
            f"## by {column}",
            "",
            f"| B | {column} | n | mean B − A (95% CI) | p | Holm p | B higher / tie / lower |",
        ]
        lines.append("|---|---|---|---|---|---|---|")
        for e in report["pairs"]:
            for value, s in e["groups"][column].items():
                lines.append(
                    f"| {e['b']} | {value} | {s['n']} | {interval(s, 'diff', sign=True)} | {fmt(s['p_wilcoxon'])} "
                    f"| {fmt(s['p_holm'])} | {s['wins']} / {s['ties']} / {s['losses']} |"
                )
    if report["summary_metrics"]:
        names = [r["name"] for r in report["runs"]]
        lines += [
            "",
            "## summary.json, side by side",
            "",
            "| | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for key, values in report["summary_metrics"].items():
            cells = (str(v) if isinstance(v, int) else fmt(v, 4) for v in values)
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    for i, rows in enumerate(extremes or [], start=1):
        e = report["pairs"][i - 1]
        lines += ["", f"## `extremes-{i}.png`: {e['a']} (left) vs {e['b']} (right), largest B − A first", ""]
        lines += [f"{n}. {d:+.3f}: {prompt!r}, seed {seed}" for n, (d, prompt, seed) in enumerate(rows, start=1)]
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def interval(stats: dict[str, Any], which: str, sign: bool = False) -> str:
    mean = stats[f"mean_{which}"]
    low, high = stats[f"ci95_{which}"]
    f = "+.3f" if sign else ".3f"
    return f"{mean:{f}} ({low:{f}} … {high:{f}})"


def extreme_keys(p: Pairing, metric: str) -> list[tuple]:
    """Up to EXTREMES keys where B − A is largest and as many where it is smallest, largest first."""
    a, b = p.values(metric)
    order = np.argsort(b - a, kind="stable")[::-1]
    chosen = order if len(order) <= 2 * EXTREMES else np.concatenate([order[:EXTREMES], order[-EXTREMES:]])
    return [p.keys[i] for i in chosen]


def side_by_side(p: Pairing, keys: list[tuple], metric: str):
    """Run A's image (left) beside run B's (right) for each key, each titled with its run and its value of
    `metric`, each pair labelled with its prompt, seed and difference, so the picture reads on its own."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(len(keys), 2, figsize=(5.2, 2.9 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        values = [run.rows[key][metric] for run in (p.a, p.b)]
        for col, run in enumerate((p.a, p.b)):
            ax = axes[row][col]
            ax.imshow(Image.open(run.folder / run.rows[key]["image"]).convert("RGB"), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{textwrap.shorten(run.name, 28)}\n{metric} {values[col]:.3f}", fontsize=7)
        prompt = textwrap.fill(textwrap.shorten(str(key[0]), 90), 30)
        axes[row][0].set_ylabel(f"{prompt}\nseed {key[2]}, B − A {values[1] - values[0]:+.3f}", fontsize=7)
    fig.suptitle(f"{metric}: {p.b.name} − {p.a.name}, largest first", fontsize=8)
    fig.tight_layout()
    return fig


def histogram(p: Pairing, metric: str, stats: dict[str, Any]):
    """The per-row differences B − A, with zero and the mean marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = p.values(metric)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(b - a, bins=min(40, max(10, len(a) // 3)), color="tab:blue", alpha=0.8)
    ax.axvline(0, color="black", linewidth=1)
    low, high = stats["ci95_diff"]
    ax.axvline(
        stats["mean_diff"], color="tab:red", label=f"mean {stats['mean_diff']:+.3f} (95% CI {low:+.3f} … {high:+.3f})"
    )
    ax.axvspan(low, high, color="tab:red", alpha=0.15)
    ax.set_xlabel(f"{metric}: {p.b.name} − {p.a.name}, per row")
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def inputs_fingerprint(report: dict[str, Any], force: bool) -> str:
    """A hash of what a comparison reads (each run's scores) and its options."""
    digest = hashlib.sha256(json.dumps([report["metric"], report["by"], force]).encode())
    for run in report["runs"]:
        digest.update(str(Path(run["folder"]).resolve()).encode())
        digest.update((Path(run["folder"]) / RESULTS).read_bytes())
    return digest.hexdigest()[:16]


def write(report: dict[str, Any], pairings: list[Pairing], out: str | Path, force: bool = False) -> Path:
    """Write compare.json, compare.md, `extremes-N.png`, `differences-N.png` and TensorBoard logs to a new folder."""
    from torch.utils.tensorboard import SummaryWriter

    run_fingerprint = inputs_fingerprint(report, force)
    folder = choose_run_dir(out, run_fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"fingerprint": run_fingerprint, "stage": "compare", "runs": [r["folder"] for r in report["runs"]]}
    atomic_write(folder / RUN_FILE, json.dumps(record, indent=2).encode())
    metric = report["metric"]
    extremes = []
    with SummaryWriter(str(folder / "tensorboard")) as tb:
        for i, (p, stats) in enumerate(zip(pairings, report["pairs"]), start=1):
            keys = extreme_keys(p, metric)
            a, b = (np.array([run.rows[k][metric] for k in keys]) for run in (p.a, p.b))
            extremes.append([(float(d), k[0], k[2]) for d, k in zip(b - a, keys)])
            pairs = side_by_side(p, keys, metric)
            buffer = io.BytesIO()
            pairs.savefig(buffer, format="png", dpi=120)
            atomic_write(folder / f"extremes-{i}.png", buffer.getvalue())
            tb.add_figure(f"compare/extremes-{i}", pairs)
            fig = histogram(p, metric, stats)
            fig.savefig(folder / f"differences-{i}.png", dpi=120)
            tb.add_figure(f"compare/differences-{i}", fig)
        table = markdown(report, extremes)
        tb.add_text("compare/table", table)
    atomic_write(folder / "compare.json", json.dumps(report, indent=2).encode())
    atomic_write(folder / "compare.md", table.encode())
    return folder


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m ldm_lightning.compare",
        description="Paired comparison of test runs of the same prompts and seeds: every run against the first.",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders written by `python -m ldm_lightning test`")
    parser.add_argument("--metric", default="clip_score", help="per-row metric of results.jsonl (default: clip_score)")
    parser.add_argument("--by", nargs="+", default=[], help="also compare within each value of these columns")
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/compare"), help="output folder (a new <out>-N if taken)"
    )
    parser.add_argument("--force", action="store_true", help="compare runs scored by different CLIPs anyway")
    args = parser.parse_args(argv)
    try:
        report, pairings = compare(args.runs, args.metric, args.by, args.force)
        folder = write(report, pairings, args.out, args.force)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print((folder / "compare.md").read_text())
    print(f"written to {folder}")
    return report


if __name__ == "__main__":
    main()
