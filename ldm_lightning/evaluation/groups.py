"""Results by group (`--data.group_by Category`): each per-sample metric's n, mean, std and 95% bootstrap
interval per value of a prompt-row column, as JSON for `summary.json`, a markdown table and a chart.
With several images per prompt, each metric also per prompt (`<metric>_per_prompt`: over prompt means)."""

from typing import Any

import numpy as np

from ldm_lightning.evaluation.summary import describe, prompt_means

# Numbers each `test` row carries about its own sample (rows left out of the mean hold None).
PER_SAMPLE_METRICS = ("clip_score",)


def group_key(value: Any) -> str:
    """A group value as a JSON object key."""
    return "(empty)" if value is None or value == "" else str(value)


def group_summary(
    rows: list[dict[str, Any]], by: list[str], metrics: tuple[str, ...] = PER_SAMPLE_METRICS
) -> dict[str, dict[str, dict[str, Any]]]:
    """`{column: {value: {"n_rows": …, metric: {n, mean, std, ci95}}}}`: one table per column, values sorted.

    When the rows carry `prompt_index` (several images per prompt), each value also holds
    `<metric>_per_prompt`: the same statistics over its prompts' means (n counts prompts).
    """
    present = [m for m in metrics if any(m in r for r in rows)]
    per_prompt = any("prompt_index" in r for r in rows)
    tables = {}
    for column in by:
        values = sorted({group_key(r.get(column)) for r in rows})
        table = {}
        for value in values:
            members = [r for r in rows if group_key(r.get(column)) == value]
            table[value] = {"n_rows": len(members)}
            for metric in present:
                scores = np.array([r[metric] for r in members if r.get(metric) is not None], dtype=np.float64)
                table[value][metric] = describe(scores)
                if per_prompt:
                    table[value][f"{metric}_per_prompt"] = describe(prompt_means(members, metric))
        tables[column] = table
    return tables


def groups_markdown(groups: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One markdown table per grouping column: a line per group, mean (95% CI) and std per metric."""
    parts = []
    for column, table in groups.items():
        metrics = [k for k in next(iter(table.values()), {}) if k != "n_rows"]
        header = [column, "rows"] + [f"{m} n | {m} mean (95% CI) | {m} std" for m in metrics]
        lines = ["| " + " | ".join(header) + " |", "|---" * (2 + 3 * len(metrics)) + "|"]
        for value, entry in table.items():
            cells = [value.replace("|", "\\|"), str(entry["n_rows"])]
            for m in metrics:
                s = entry[m]
                cells += [str(s["n"]), f"{s['mean']:.2f} ({s['ci95'][0]:.2f}–{s['ci95'][1]:.2f})", f"{s['std']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def groups_figure(groups: dict[str, dict[str, dict[str, Any]]], metric: str = "clip_score"):
    """Each group's mean of the metric as a dot with its 95% interval and its value written beside it; one panel per
    column. The axis spans the data, not zero: CLIPScores of 69.2 and 71.6 on bars from 0 would look equal, and dots
    (not bars, whose length would then mislead) are what an axis that does not start at zero can show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(groups), 1, figsize=(7, 2.5 + 0.3 * max(len(t) for t in groups.values())))
    for ax, (column, table) in zip(np.atleast_1d(axes), groups.items()):
        names = list(table)
        stats = [table[n].get(metric, {"mean": np.nan, "ci95": [np.nan, np.nan]}) for n in names]
        means = np.array([s["mean"] for s in stats], dtype=np.float64)
        low = np.array([np.nan if s["ci95"][0] is None else s["ci95"][0] for s in stats], dtype=np.float64)
        high = np.array([np.nan if s["ci95"][1] is None else s["ci95"][1] for s in stats], dtype=np.float64)
        error = np.nan_to_num(np.stack([means - low, high - means]))  # no interval (one sample): no whisker
        y = np.arange(len(names))
        ax.errorbar(means, y, xerr=error, fmt="o", capsize=3, color="tab:blue")
        shown = np.concatenate([means, low, high])
        shown = shown[np.isfinite(shown)]
        lo, hi = (shown.min(), shown.max()) if len(shown) else (0.0, 1.0)
        pad = max(hi - lo, abs(hi) * 0.01, 1e-6) * 0.12
        ax.set_xlim(lo - pad, hi + 3 * pad)  # room on the right for the labels
        for value, top, row in zip(means, high, y):
            if np.isfinite(value):
                ax.annotate(f"{value:.1f}", (np.nanmax([value, top]), row), xytext=(5, 0), textcoords="offset points",
                            va="center", fontsize=8)  # fmt: skip
        ax.set_yticks(y, [f"{n} ({table[n]['n_rows']})" for n in names])
        ax.invert_yaxis()
        ax.set_xlabel(f"{metric} (mean, 95% CI; rows per group in brackets)")
        ax.set_title(f"by {column}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
