"""The benchmark's picture: from its tables (`benchmark.json`, or the benchmark passing them directly),
or from a log holding its printed markdown (e.g. several benchmark runs appended to one log).

    python -m ldm_lightning.lab.benchmark_report LOG_OR_JSON [LOG_OR_JSON …] --out benchmark.png [--tensorboard DIR]

One bar per variant and table: speed relative to `StableDiffusionPipeline` in the same table
(1 / "× pipeline time"), grouped by dtype, device and batch size, so the fast mode's gain and the
exact mode's parity read off at a glance.
"""

import argparse
import json
import re
import sys
from pathlib import Path

SETTING = re.compile(r", (fp32|bf16|fp16), (cpu|cuda) \(([^)]*)\)")
BATCH = re.compile(r"^batch (\d+) × (\d+) batches")


def parse_tables(text: str) -> list[dict]:
    """Each table of the output: {"dtype", "device", "batch", "rows": [{column: cell}]}, in order.

    A table needs the setting line and the "batch N × M batches" line that the benchmark prints above
    it; tables without them (a log cut short, or filtered) are left out with a warning.
    """
    tables, setting, current, columns, orphans = [], None, None, None, 0
    for line in text.splitlines():
        if match := SETTING.search(line):
            setting = {"dtype": match[1], "device": match[2], "where": match[3]}
            current = None  # rows count only under a "batch N" line
        elif (match := BATCH.match(line)) and setting:
            current = {**setting, "batch": int(match[1]), "rows": []}
            tables.append(current)
            columns = None
        elif line.startswith("| variant") and current is None:
            orphans += 1
        elif line.startswith("|") and current is not None:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if columns is None:
                columns = cells
            elif not set(line) <= set("|-"):
                current["rows"].append(dict(zip(columns, cells)))
    if orphans:
        print(f"warning: {orphans} table(s) without a setting and batch line above them left out", file=sys.stderr)
    return tables


def plot(tables: list[dict], path: str | Path) -> None:
    """Grouped bars: each variant's speed-up over the pipeline, one group per table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(row["variant"] for t in tables for row in t["rows"]))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tables) + 2), 4))
    for i, name in enumerate(variants):
        xs, ys = [], []
        for j, table in enumerate(tables):
            row = next((r for r in table["rows"] if r["variant"] == name), None)
            if row:
                xs.append(j + (i - (len(variants) - 1) / 2) * width)
                ys.append(1 / float(row["× pipeline time"]))
        bars = ax.bar(xs, ys, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(tables)), [f"{t['dtype']} {t['device']}\nbatch {t['batch']}" for t in tables])
    ax.set_ylabel("speed vs StableDiffusionPipeline (×)")
    where = ", ".join(dict.fromkeys(t["where"] for t in tables))
    ax.set_title(f"Sampling speed relative to the diffusers pipeline ({where})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(tables: list[dict], png: str | Path, tensorboard: str | Path | None = None, text: str = "") -> int:
    """Draw the picture of `tables` (and log the printed `text` and the picture to TensorBoard); how many tables."""
    if not tables:
        raise SystemExit("error: no benchmark tables found")
    plot(tables, png)
    if tensorboard:
        from ldm_lightning.lab.tensorboard_log import log_table

        keep = lambda line: line.startswith(("|", "- ")) or BATCH.match(line) or SETTING.search(line)  # noqa: E731
        log_table(tensorboard, "benchmark", "\n".join(line for line in text.splitlines() if keep(line)), png)
    return len(tables)


def read_tables(path: Path) -> tuple[list[dict], str]:
    """Tables and printable text of a `benchmark.json` or of a log holding the printed markdown."""
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text), ""
    return parse_tables(text), text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", type=Path, nargs="+", help="benchmark.json files or logs holding benchmark output")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--tensorboard", default=None, help="also log the tables and the picture here")
    args = parser.parse_args(argv)
    tables, texts = [], []
    for path in args.inputs:
        found, text = read_tables(path)
        tables += found
        texts.append(text)
    print(f"{report(tables, args.out, args.tensorboard, chr(10).join(texts))} tables -> {args.out}")


if __name__ == "__main__":
    main()
