"""Prompt suites, grouped results and the paired comparison of runs, checked against plain computations."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from helpers import cli_args, exact_wilcoxon_p, manifest, run_cli

from ldm_lightning.data import read_rows
from ldm_lightning.evaluation.compare import main as compare_main
from ldm_lightning.evaluation.stats import holm

# PartiPrompts' layout (github.com/google-research/parti, PartiPrompts.tsv): tab-separated, unquoted.
PARTI = [
    ("a red circle", "Colours", "Basic", ""),
    ("a blue star", "Colours", "Basic", ""),
    ('"a green square", said the sign, on the left', "Writing", "Quoted", "starts with a quote"),
    ("a large yellow triangle at the top", "Shapes", "Simple Detail", ""),
    ("a small purple cross", "Shapes", "Simple Detail", ""),
    ("a white circle on the right", "Position", "Basic", ""),
    ("a cyan star at the bottom", "Position", "Fine-grained Detail", "two details"),
]


def write_parti(path: Path, rows=PARTI) -> Path:
    lines = ["Prompt\tCategory\tChallenge\tNote"] + ["\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def key(row: dict) -> tuple:
    return row["prompt"], row["negative_prompt"], row["seed"]


def run_compare(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        compare_main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def runs(tiny_model, tiny_clip, tmp_path_factory) -> dict[str, Path]:
    """Two `test` runs of the same PartiPrompts-style suite and seeds: 2 and 5 DDIM steps, grouped by Category."""
    root = tmp_path_factory.mktemp("runs")
    suite = write_parti(root / "suite.tsv")
    folders = {}
    for steps in (2, 5):
        args = cli_args(
            "test",
            "--data.group_by=[Category]",
            model=tiny_model,
            clip=tiny_clip,
            steps=steps,
            prompts=suite,
            out=root / f"steps{steps}",
        )
        code, err = run_cli(args)
        assert code == 0, err
        folders[f"steps{steps}"] = root / f"steps{steps}"
    return folders


def test_tsv_and_csv_prompt_suites_load_with_their_categories(tmp_path):
    rows = read_rows(str(write_parti(tmp_path / "parti.tsv")), seed=0)
    assert [r["prompt"] for r in rows] == [p for p, *_ in PARTI]  # the leading quotation mark is kept
    assert [(r["Category"], r["Challenge"]) for r in rows] == [(c, ch) for _, c, ch, _ in PARTI]
    assert [r["Note"] or "" for r in rows] == [n for *_, n in PARTI]
    # DrawBench's layout: CSV with `Prompts` and `Category`, quoted where a prompt holds a comma.
    (tmp_path / "drawbench.csv").write_text(
        'Prompts,Category\n"A red colored car, parked.",Colors\nA triangle on top of a square.,Positional\n'
    )
    rows = read_rows(str(tmp_path / "drawbench.csv"), seed=7)
    assert [(r["prompt"], r["Category"], r["seed"]) for r in rows] == [
        ("A red colored car, parked.", "Colors", 7),
        ("A triangle on top of a square.", "Positional", 8),
    ]
    assert read_rows(str(tmp_path / "drawbench.csv"), seed=0, prompt_column="category")[0]["prompt"] == "Colors"


def test_test_run_carries_the_suite_columns_and_summarises_each_group(runs):
    folder = runs["steps2"]
    rows = manifest(folder, "results.jsonl")
    assert [(r["prompt"], r["Category"], r["Challenge"]) for r in rows] == [(p, c, ch) for p, c, ch, _ in PARTI]
    groups = json.loads((folder / "summary.json").read_text())["groups"]["Category"]
    categories = sorted({c for _, c, _, _ in PARTI})
    assert list(groups) == categories
    for category in categories:
        scores = np.array([r["clip_score"] for r in rows if r["Category"] == category])
        entry = groups[category]["clip_score"]
        assert entry["n"] == len(scores) == groups[category]["n_rows"]
        assert entry["mean"] == scores.mean()
        if len(scores) > 1:
            assert entry["std"] == scores.std(ddof=1)
            assert entry["ci95"][0] <= entry["mean"] <= entry["ci95"][1]
    table = (folder / "groups.md").read_text()
    assert all(f"| {c} | " in table for c in categories)
    assert list((folder / "tensorboard").glob("events.out.tfevents.*"))


def test_a_finished_run_started_again_gains_new_groups(runs, tiny_model, tiny_clip, tmp_path):
    folder = shutil.copytree(runs["steps2"], tmp_path / "run")
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("0*.png")}
    suite = runs["steps2"].parent / "suite.tsv"
    args = cli_args(
        "test", "--data.group_by=[Challenge]", model=tiny_model, clip=tiny_clip, steps=2, prompts=suite, out=folder
    )
    code, err = run_cli(args)
    assert code == 0, err
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("0*.png")} == before  # nothing generated again
    groups = json.loads((folder / "summary.json").read_text())["groups"]
    assert list(groups) == ["Challenge"]
    assert {v: g["n_rows"] for v, g in groups["Challenge"].items()} == {
        ch: sum(c == ch for _, _, c, _ in PARTI) for ch in {c for _, _, c, _ in PARTI}
    }


def test_missing_group_column_names_data_group_by_and_the_columns(tiny_model, tmp_path, capsys):
    suite = write_parti(tmp_path / "suite.tsv")
    args = cli_args(
        "predict", "--data.group_by=[category_typo]", model=tiny_model, size=None, prompts=suite, out=tmp_path / "out"
    )
    code, err = run_cli(args, capsys)
    assert code == 2 and "Traceback" not in err
    [line] = [x for x in err.splitlines() if x.startswith("error:")]  # after Lightning's own "Seed set" line
    assert line.startswith("error: data.group_by:") and "'category_typo'" in line and "Category" in line


def test_paired_difference_equals_an_independent_computation(runs, tmp_path, capsys):
    code, out, err = run_compare(
        [runs["steps2"], runs["steps5"], "--by", "Category", "--out", tmp_path / "cmp"], capsys
    )
    assert code == 0, err
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    [pair] = report["pairs"]
    a = {key(r): r for r in manifest(runs["steps2"], "results.jsonl")}
    b = {key(r): r for r in manifest(runs["steps5"], "results.jsonl")}
    keys = list(a)
    diff = np.array([b[k]["clip_score"] - a[k]["clip_score"] for k in keys])
    assert pair["n"] == len(diff) == len(PARTI) and pair["n_matched"] == len(PARTI)
    assert pair["mean_diff"] == diff.mean()
    assert (pair["wins"], pair["ties"], pair["losses"]) == ((diff > 0).sum(), (diff == 0).sum(), (diff < 0).sum())
    assert pair["p_wilcoxon"] == pytest.approx(exact_wilcoxon_p(diff), rel=1e-9)
    # The paired interval is the percentile bootstrap of the differences: scipy's, with its own
    # resamples, agrees to Monte-Carlo error (a few hundredths of the interval's half-width).
    reference = scipy.stats.bootstrap(
        (diff,), np.mean, method="percentile", n_resamples=20_000, random_state=np.random.default_rng(1)
    ).confidence_interval
    half_width = (reference.high - reference.low) / 2
    assert abs(pair["ci95_diff"][0] - reference.low) < 0.15 * half_width
    assert abs(pair["ci95_diff"][1] - reference.high) < 0.15 * half_width
    for category, stats in pair["groups"]["Category"].items():
        d = np.array([b[k]["clip_score"] - a[k]["clip_score"] for k in keys if a[k]["Category"] == category])
        assert stats["n"] == len(d) and stats["mean_diff"] == d.mean()
        assert stats["wins"] + stats["ties"] + stats["losses"] == len(d)
        assert stats["p_wilcoxon"] == pytest.approx(exact_wilcoxon_p(d), rel=1e-9)
    for name in ("compare.md", "extremes-1.png", "differences-1.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0
    assert list((tmp_path / "cmp" / "tensorboard").glob("events.out.tfevents.*"))
    assert "mean B − A" in out and "## by Category" in out
    # The same comparison again goes to a new folder only if its inputs changed; here they did not.
    assert run_compare([runs["steps2"], runs["steps5"], "--by", "Category", "--out", tmp_path / "cmp"], capsys)[0] == 0
    assert not (tmp_path / "cmp-1").exists()


def fake_run(source: Path, folder: Path, rows: list[dict], settings: dict | None = None) -> Path:
    """A run folder with the given results rows (images copied from `source`)."""
    folder.mkdir(parents=True)
    run = json.loads((source / "run.json").read_text())
    run["settings"].update(settings or {})
    (folder / "run.json").write_text(json.dumps(run))
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for r in rows:
        if (source / r["image"]).is_file():
            shutil.copy(source / r["image"], folder / r["image"])
    return folder


def test_matching_handles_reordered_rows_partial_overlap_and_holm(runs, tmp_path, capsys):
    a_rows = manifest(runs["steps2"], "results.jsonl")
    shifted = [dict(r, clip_score=r["clip_score"] + (0.5 if i % 2 else -0.25)) for i, r in enumerate(a_rows)]
    extra = dict(a_rows[0], prompt="a prompt run A never saw", seed=99)
    c_rows = [extra] + shifted[1:][::-1]  # reordered, one row missing, one row A does not have
    c = fake_run(runs["steps2"], tmp_path / "c", c_rows)
    code, _, err = run_compare([runs["steps2"], runs["steps5"], c, "--out", tmp_path / "cmp"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    to_c = report["pairs"][1]
    n = len(a_rows)
    assert (to_c["n_a"], to_c["n_b"], to_c["n_matched"], to_c["n"]) == (n, n, n - 1, n - 1)
    expected = np.array([0.5 if i % 2 else -0.25 for i in range(1, len(a_rows))])
    assert to_c["mean_diff"] == pytest.approx(expected.mean(), abs=1e-9)
    assert (to_c["wins"], to_c["ties"], to_c["losses"]) == ((expected > 0).sum(), 0, (expected < 0).sum())
    # Holm 1979 for two p-values: the smaller doubled, the larger kept but never below it.
    p = [e["p_wilcoxon"] for e in report["pairs"]]
    low, high = sorted(p)
    adjusted = {low: min(1, 2 * low), high: max(min(1, 2 * low), high)}
    assert [e["p_holm"] for e in report["pairs"]] == pytest.approx([adjusted[x] for x in p])


def test_holm_step_down_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3·0.01, 2·0.03, max(0.06, 1·0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, float("nan"), 0.6]) == pytest.approx([1.0, float("nan"), 1.0], nan_ok=True)


BAD_INPUTS = {
    "not a run": ("empty", [], "not a run folder"),
    "no scores": ("predict", [], "no scores"),
    "metric absent": ("copy", ["--metric", "fid"], "--metric:"),
    "metric not a number": ("copy", ["--metric", "prompt"], "is not a number"),
    "duplicate keys": ("duplicate", [], "two rows share"),
    "group column absent": ("copy", ["--by", "Colour"], "--by:"),
    "different CLIPs": ("other_clip", [], "scored by CLIP"),
    "nothing matched": ("other_seeds", [], "no scored row shares"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case, runs, tmp_path, capsys):
    kind, extra, words = BAD_INPUTS[case]
    source = runs["steps2"]
    rows = manifest(source, "results.jsonl")
    folder = tmp_path / "b"
    if kind == "empty":
        folder.mkdir()
    elif kind == "predict":
        fake_run(source, folder, [])
        (folder / "results.jsonl").unlink()
    elif kind == "copy":
        fake_run(source, folder, rows)
    elif kind == "duplicate":
        fake_run(source, folder, rows + rows[:1])
    elif kind == "other_clip":
        fake_run(source, folder, rows, {"clip_model": "openai/clip-vit-base-patch32"})
    elif kind == "other_seeds":
        fake_run(source, folder, [dict(r, seed=r["seed"] + 1000) for r in rows])
    code, _, err = run_compare([source, folder, *extra, "--out", tmp_path / "cmp"], capsys)
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("error: ") and words in line
    assert not (tmp_path / "cmp").exists()


def test_different_clips_with_force_and_different_models_warn(runs, tmp_path, capsys):
    rows = manifest(runs["steps2"], "results.jsonl")
    other = fake_run(runs["steps2"], tmp_path / "b", rows, {"clip_model": "other-clip", "model": "other-model"})
    code, _, err = run_compare([runs["steps2"], other, "--force", "--out", tmp_path / "cmp"], capsys)
    assert code == 0
    assert "warning:" in err and "other-clip" in err and "other-model" in err
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert report["pairs"][0]["mean_diff"] == 0 and report["pairs"][0]["ties"] == len(rows)
    assert report["pairs"][0]["p_wilcoxon"] == 1.0


def test_command_line_refuses_a_folder_that_is_not_a_run_in_one_line(tmp_path):
    cmd = [sys.executable, "-m", "ldm_lightning.compare", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o")]
    done = subprocess.run(["timeout", "-k", "10", "120", *cmd], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path}: not a run folder (no run.json); give folders written by `python -m ldm_lightning test`"
    ]
