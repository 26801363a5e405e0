"""The module, data module and writer in a plain `Trainer`: scores returned, the CLI's folder, DDP = 1 process."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import cli_args, manifest, run_cli
from lightning import Trainer

from ldm_lightning import ImageWriter, LatentDiffusionModule, PromptDataModule
from ldm_lightning.errors import UserError
from ldm_lightning.evaluation.metrics import ClipScore
from ldm_lightning.generation.guidance import ClassifierFreeGuidance
from ldm_lightning.generation.sampler import Sampling

TUTORIAL = Path(__file__).parents[1] / "docs" / "tutorials" / "first-images.md"
PROMPTS = ["a red circle", "a blue square", "a green star", "a yellow cross", "a purple triangle"]
SAMPLING = {"num_inference_steps": 3, "height": 32, "width": 32}
GUIDANCE_SCALE = 3.0
TIMINGS = ("seconds", "sampling_seconds", "peak_memory_mb", "first_batch")


def trainer(**kwargs) -> Trainer:
    defaults = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False}
    return Trainer(**{**defaults, **kwargs})


def module_on(tiny_model: str, tiny_clip: str, guidance_scale: float = GUIDANCE_SCALE) -> LatentDiffusionModule:
    return LatentDiffusionModule(
        tiny_model,
        sampling=Sampling(**SAMPLING),
        guidance=ClassifierFreeGuidance(guidance_scale=guidance_scale),
        metrics=[ClipScore(tiny_clip)],
    )


def cli_run_args(tiny_model: str, tiny_clip: str, out: Path) -> list[str]:
    settings = [f"--model.sampling.{k}={v}" for k, v in SAMPLING.items()]
    settings.append(f"--model.guidance.guidance_scale={GUIDANCE_SCALE}")
    return cli_args(
        "test",
        *settings,
        model=tiny_model,
        clip=tiny_clip,
        size=None,
        prompts=json.dumps(PROMPTS),
        batch_size=2,
        out=out,
    )


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def test_trainer_test_returns_the_clis_summary_and_the_writer_writes_the_clis_folder(tiny_model, tiny_clip, tmp_path):
    assert run_cli(cli_run_args(tiny_model, tiny_clip, tmp_path / "cli"))[0] == 0
    cli_summary = json.loads((tmp_path / "cli" / "summary.json").read_text())

    module = module_on(tiny_model, tiny_clip)
    data = PromptDataModule(prompts=PROMPTS, batch_size=2)
    plain = trainer().test(module, datamodule=data, verbose=False)[0]
    assert plain["test/clip_score"] == pytest.approx(cli_summary["clip_score_mean"], abs=1e-6)
    assert [plain["test/clip_score_ci95_low"], plain["test/clip_score_ci95_high"]] == pytest.approx(
        cli_summary["clip_score_ci95"], abs=1e-6
    )
    assert plain["test/n"] == cli_summary["n"] == len(PROMPTS)

    written = tmp_path / "mine"
    trainer(callbacks=[ImageWriter(written)]).test(module, datamodule=PromptDataModule(prompts=PROMPTS, batch_size=2))
    cli_rows, our_rows = manifest(tmp_path / "cli", "results.jsonl"), manifest(written, "results.jsonl")
    assert without_timings(our_rows) == without_timings(cli_rows)
    for row in our_rows:
        assert (written / row["image"]).read_bytes() == (tmp_path / "cli" / row["image"]).read_bytes()
    summary = json.loads((written / "summary.json").read_text())
    assert summary["clip_score_mean"] == pytest.approx(cli_summary["clip_score_mean"], abs=1e-9)
    assert {"grid.png", "manifest.jsonl", "run.json"} <= {p.name for p in written.iterdir()}


def test_the_writer_resumes_and_refuses_a_folder_of_another_run(tiny_model, tiny_clip, tmp_path):
    module = module_on(tiny_model, tiny_clip)
    out = tmp_path / "run"
    first = trainer(callbacks=[ImageWriter(out)]).test(module, datamodule=PromptDataModule(prompts=PROMPTS))[0]
    # An interrupted run: the last two rows and their images are gone.
    rows = manifest(out, "results.jsonl")
    for row in rows[3:]:
        (out / row["image"]).unlink()
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    data = PromptDataModule(prompts=PROMPTS)
    again = trainer(callbacks=[ImageWriter(out)]).test(module, datamodule=data)[0]
    assert data.skip == {0, 1, 2}  # only rows 3 and 4 were generated again
    assert again["test/clip_score"] == pytest.approx(first["test/clip_score"], abs=1e-9)
    assert [r["index"] for r in manifest(out, "results.jsonl")] == [0, 1, 2, 3, 4]

    other = module_on(tiny_model, tiny_clip, guidance_scale=5.0)
    with pytest.raises(UserError, match="holds another run"):
        trainer(callbacks=[ImageWriter(out)]).test(other, datamodule=PromptDataModule(prompts=PROMPTS))


def tutorial_blocks() -> list[str]:
    """The Python code blocks of the first tutorial's "The same from Python" step, as written."""
    text = TUTORIAL.read_text(encoding="utf-8")
    section = text.split("## 5. The same from Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.ddp
def test_the_tutorials_python_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    blocks = tutorial_blocks()
    assert len(blocks) == 4
    session, script = "\n".join(blocks[:3]), blocks[3]
    # The first three blocks, as one notebook session: in this process, in a fresh folder.
    monkeypatch.chdir(tmp_path)
    exec(compile(session, str(TUTORIAL), "exec"), {"__name__": "__main__"})
    assert "a red circle 0 (64, 64, 3)" in capsys.readouterr().out  # the first block's print
    # The DDP script in a process of its own, since DDP starts it again for the second process.
    (tmp_path / "script.py").write_text(textwrap.dedent(script))
    cmd = ["timeout", "-k", "10", "240", sys.executable, "script.py"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, f"script.py: {done.stderr[-2000:]}"
    written = tmp_path / "outputs" / "mine"
    assert len(list(written.glob("*.png"))) == 4  # three images and the grid
    summary = json.loads((written / "summary.json").read_text())
    assert summary["n"] == 3
    # The DDP script (two processes, Lightning's defaults) returns the one-process mean of the same prompts.
    ddp = re.findall(r"'test/clip_score': ([0-9.e+-]+)", done.stdout)
    assert len(ddp) == 2  # each process prints what trainer.test returned to it
    # Other batches on each process round the U-Net's kernels differently (images within one 8-bit level).
    assert [float(v) for v in ddp] == pytest.approx([summary["clip_score_mean"]] * 2, rel=1e-6)
