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

README = Path(__file__).parents[1] / "README.md"
PROMPTS = ["a red circle", "a blue square", "a green star", "a yellow cross", "a purple triangle"]
SETTINGS = {"num_inference_steps": 3, "height": 32, "width": 32, "guidance_scale": 3.0}
TIMINGS = ("seconds", "peak_memory_mb", "first_batch")


def trainer(**kwargs) -> Trainer:
    defaults = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False}
    return Trainer(**{**defaults, **kwargs})


def module_on(tiny_model: str, tiny_clip: str) -> LatentDiffusionModule:
    return LatentDiffusionModule(tiny_model, clip_model_name_or_path=tiny_clip, **SETTINGS)


def cli_run_args(tiny_model: str, tiny_clip: str, out: Path) -> list[str]:
    settings = [f"--model.{k}={v}" for k, v in SETTINGS.items()]
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

    other = LatentDiffusionModule(tiny_model, clip_model_name_or_path=tiny_clip, **{**SETTINGS, "guidance_scale": 5.0})
    with pytest.raises(UserError, match="holds another run"):
        trainer(callbacks=[ImageWriter(out)]).test(other, datamodule=PromptDataModule(prompts=PROMPTS))


DDP_SCRIPT = """
import json, sys
from lightning import Trainer
from ldm_lightning import LatentDiffusionModule, PromptDataModule

if __name__ == "__main__":
    model, clip, prompts, out = sys.argv[1:5]
    module = LatentDiffusionModule(model, clip_model_name_or_path=clip, num_inference_steps=3, height=32, width=32)
    data = PromptDataModule(prompts=json.loads(prompts), batch_size=2)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    scores = trainer.test(module, datamodule=data, verbose=False)[0]
    if trainer.is_global_zero:
        rows = module.results.compute()
        json.dump({"scores": scores, "indices": [r["index"] for r in rows]}, open(out, "w"))
"""


def test_ddp_with_lightnings_defaults_scores_each_row_once_and_equals_one_process(tiny_model, tiny_clip, tmp_path):
    script, out = tmp_path / "score.py", tmp_path / "ddp.json"
    script.write_text(DDP_SCRIPT)
    cmd = [sys.executable, str(script), tiny_model, tiny_clip, json.dumps(PROMPTS), str(out)]
    done = subprocess.run(["timeout", "-k", "10", "150", *cmd], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    ddp = json.loads(out.read_text())
    assert ddp["indices"] == list(range(len(PROMPTS)))  # 5 rows on 2 processes: 3 + 2, none twice

    one = trainer().test(module_on(tiny_model, tiny_clip), datamodule=PromptDataModule(prompts=PROMPTS, batch_size=2))
    assert ddp["scores"]["test/clip_score"] == pytest.approx(one[0]["test/clip_score"], abs=1e-6)
    assert ddp["scores"]["test/n"] == one[0]["test/n"] == len(PROMPTS)


def readme_blocks() -> list[str]:
    """The Python code blocks of the README's "From Python" section, as written."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readmes_python_blocks_run_as_written(tmp_path):
    blocks = readme_blocks()
    assert len(blocks) == 4
    session, script = "\n".join(blocks[:3]), blocks[3]
    (tmp_path / "session.py").write_text("import torch\ntorch.set_num_threads(1)\n" + session)
    (tmp_path / "script.py").write_text(textwrap.dedent(script))
    for name, limit in (("session.py", 240), ("script.py", 240)):
        cmd = ["timeout", "-k", "10", str(limit), sys.executable, name]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"
        assert "test/clip_score" in done.stdout or name == "session.py"
    written = tmp_path / "outputs" / "mine"
    assert len(list(written.glob("*.png"))) == 4  # three images and the grid
    assert json.loads((written / "summary.json").read_text())["n"] == 3
