"""The how-to's "Your own guidance" and "Your own metric", run as written: the class saved as the page names its
file, the command line as printed; and the own metric on two processes and after a SIGKILL."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from helpers import kill_after_rows, manifest, metrics_arg, pixels, run_cli, run_cli_subprocess

ROOT = Path(__file__).parents[1]
PAGE = ROOT / "docs" / "how-to" / "your-own-parts.md"
DDP = str(ROOT / "configs" / "devices" / "ddp-cpu-2.yaml")


def section(title: str) -> str:
    text = PAGE.read_text(encoding="utf-8")
    start = text.index(f"### {title}\n")
    end = re.compile(r"^#{2,3} ", re.M).search(text, start + 4).start()
    return text[start:end]


def saved_block(title: str, folder: Path) -> Path:
    """The section's Python block, saved under the file name its first line gives."""
    code = re.search(r"```python\n(.*?)```", section(title), re.S)[1]
    name = code.splitlines()[0].removeprefix("# ").strip()
    path = folder / name
    path.write_text(code, encoding="utf-8")
    return path


def command(title: str) -> list[str]:
    """The section's command line, without `python -m ldm_lightning`."""
    line = re.search(r"```bash\n(.*?)\n```", section(title), re.S)[1]
    words = shlex.split(line)
    assert words[:3] == ["python", "-m", "ldm_lightning"]
    return words[3:]


@pytest.fixture
def in_user_folder(tmp_path, monkeypatch):
    """A folder of one's own to run from, importable as `python -m` makes the working folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def sharpness(image: np.ndarray) -> float:
    """The page's metric computed independently: numpy's 2-D correlation with the Laplacian, valid region."""
    grey = image.astype(np.float64).mean(axis=2)
    lap = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1]
    return float(np.abs(lap).mean())


def test_own_guidance_as_the_docs_write_it(in_user_folder):
    code = saved_block("Your own guidance", in_user_folder)
    assert len(code.read_text().splitlines()) <= 25
    args = command("Your own guidance")
    assert run_cli([*args, "--output_dir=ramped", "--trainer.enable_progress_bar=false"])[0] == 0
    assert run_cli(["predict", "--output_dir=plain", "--trainer.enable_progress_bar=false"])[0] == 0
    ramped, plain = manifest(in_user_folder / "ramped"), manifest(in_user_folder / "plain")
    assert {r["guidance"] for r in ramped} == {"my_guidance.RampedGuidance"}
    assert {r["guidance_scale"] for r in ramped} == {5.0}
    assert len(ramped) == len(plain) == 8
    differ = [np.abs(pixels("ramped", a) - pixels("plain", b)).max() for a, b in zip(ramped, plain)]
    assert min(differ) > 1  # another guidance, other images


def test_own_metric_as_the_docs_write_it(in_user_folder):
    code = saved_block("Your own metric", in_user_folder)
    assert len(code.read_text().splitlines()) <= 25
    args = command("Your own metric")
    out = Path(args[args.index("--output_dir") + 1])
    assert run_cli([*args, "--trainer.enable_progress_bar=false"])[0] == 0
    rows = manifest(out, "results.jsonl")
    expected = [sharpness(pixels(out, r)) for r in rows]
    assert [r["sharpness"] for r in rows] == pytest.approx(expected, rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sharpness_mean"] == pytest.approx(np.mean(expected), rel=1e-5)
    assert summary["sharpness_ci95"][0] < summary["sharpness_mean"] < summary["sharpness_ci95"][1]
    assert summary["sharpness_n"] == 8
    assert "Sharpness()" in summary["metrics"]


COUNTED = '''
from pathlib import Path

from my_metrics import Sharpness


class CountedSharpness(Sharpness):
    """The page's metric, noting each row it scores."""

    def score(self, images, prompts, rows):
        with open(Path(__file__).parent / "scored.txt", "a") as f:
            f.write("".join(f"{r['index']}\\n" for r in rows))
        return super().score(images, prompts, rows)
'''


@pytest.mark.ddp
def test_own_metric_on_two_processes_and_after_a_kill(in_user_folder, monkeypatch, tiny_model, tiny_clip):
    saved_block("Your own metric", in_user_folder)
    (in_user_folder / "counted.py").write_text(COUNTED)
    monkeypatch.setenv("PYTHONPATH", str(in_user_folder))
    prompts = json.dumps([f"a red circle {i}" for i in range(6)])
    args = [
        "test",
        f"--model.pretrained_model_name_or_path={tiny_model}",
        "--model.sampling.num_inference_steps=3",
        "--model.sampling.height=32",
        "--model.sampling.width=32",
        f"--data.prompts={prompts}",
        "--data.batch_size=1",
        "--trainer.enable_progress_bar=false",
        f"--model.metrics={metrics_arg(clip=tiny_clip)}",
    ]
    one, two, killed = in_user_folder / "one", in_user_folder / "two", in_user_folder / "killed"
    assert run_cli([*args, "--model.metrics+=my_metrics.Sharpness", f"--output_dir={one}"])[0] == 0
    reference = {r["index"]: r["sharpness"] for r in manifest(one, "results.jsonl")}

    done = run_cli_subprocess(
        [*args, "--model.metrics+=my_metrics.Sharpness", f"--output_dir={two}", f"--config={DDP}"]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert {r["index"]: r["sharpness"] for r in manifest(two, "results.jsonl")} == pytest.approx(reference)
    assert json.loads((two / "summary.json").read_text())["sharpness_n"] == 6

    counted = [*args, "--model.metrics+=counted.CountedSharpness", f"--output_dir={killed}"]
    kill_after_rows(counted, killed / "results.jsonl", rows=2)
    finished = {r["index"] for r in manifest(killed, "results.jsonl")}
    assert 2 <= len(finished) < 6
    (in_user_folder / "scored.txt").write_text("")  # from here on: what the resumed run scores
    assert run_cli(counted)[0] == 0
    scored = {int(i) for i in (in_user_folder / "scored.txt").read_text().split()}
    assert scored and not scored & finished  # finished rows are not scored again
    assert {r["index"]: r["sharpness"] for r in manifest(killed, "results.jsonl")} == pytest.approx(reference)
    assert json.loads((killed / "summary.json").read_text())["sharpness_mean"] == pytest.approx(
        np.mean(list(reference.values()))
    )
