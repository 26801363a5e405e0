"""Several processes writing one run folder: one writer per file, decisions taken together, resume read once."""

import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli_args, manifest, quiet_trainer, run_cli

from ldm_lightning import ImageWriter, LatentDiffusionModule, PromptDataModule
from ldm_lightning.evaluation.metrics import ClipScore
from ldm_lightning.generation.sampler import Sampling

PROMPTS = ["a red circle", "a blue square", "a green star", "a yellow cross", "a white circle", "a red star"]
SETTINGS = {"num_inference_steps": 2, "height": 32, "width": 32}

# DDP starts this script once per process (Lightning's launcher runs it again for rank 1). It records, per rank,
# the files it appended to, the PNGs it decoded and the npz files it loaded while the writer set up, and its error
# with the time it was raised.
SCRIPT = """
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
from lightning import Trainer

from ldm_lightning import ImageWriter, LatentDiffusionModule, PromptDataModule
from ldm_lightning.errors import UserError
from ldm_lightning.evaluation.metrics import ClipScore
from ldm_lightning.generation.sampler import Sampling

if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    seen = {"decoded": [], "loaded": [], "appended": [], "error": None, "error_at": None}
    in_setup = []
    open_image, load, open_file = PIL.Image.open, np.load, os.open

    def counting_open(path, *args, **kwargs):
        if in_setup:
            seen["decoded"].append(str(path))
        return open_image(path, *args, **kwargs)

    def counting_load(path, *args, **kwargs):
        if in_setup:
            seen["loaded"].append(str(path))
        return load(path, *args, **kwargs)

    def recording_open(path, flags, *args, **kwargs):
        if flags & os.O_APPEND:
            seen["appended"].append(os.path.basename(path))
        return open_file(path, flags, *args, **kwargs)

    setup = ImageWriter.setup

    def recorded_setup(self, *args, **kwargs):
        in_setup.append(True)
        try:
            return setup(self, *args, **kwargs)
        finally:
            in_setup.clear()

    PIL.Image.open, np.load, os.open, ImageWriter.setup = counting_open, counting_load, recording_open, recorded_setup
    settings = spec["module"]
    metrics = [ClipScore(settings["clip"]), *settings["metrics"]]
    module = LatentDiffusionModule(spec["model"], sampling=Sampling(**settings["sampling"]), metrics=metrics)
    data = PromptDataModule(**spec["data"])
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ImageWriter(spec["out"])],
    )
    try:
        trainer.test(module, datamodule=data, verbose=False)
    except UserError as err:
        seen["error"], seen["error_at"] = str(err), time.time()
        sys.exit(2)
    finally:
        record = Path(spec["record"]) / f"rank{trainer.global_rank}.json"
        seen["appended"] = sorted(set(seen["appended"]))
        record.write_text(json.dumps(seen))
"""


def run_two_processes(folder: Path, spec: dict, timeout: int = 180) -> subprocess.CompletedProcess:
    """SCRIPT on two DDP processes with `spec`, recording into `folder` (see `records`)."""
    folder.mkdir()
    script = folder / "two_processes.py"
    script.write_text(SCRIPT)
    args = [sys.executable, str(script), json.dumps({**spec, "record": str(folder)})]
    return subprocess.run(["timeout", "-k", "10", str(timeout), *args], capture_output=True, text=True, cwd=folder)


def records(folder: Path) -> list[dict]:
    """What each rank appended to, decoded and loaded, and its error (see SCRIPT), rank by rank."""
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(2)]


def module_of(spec: dict) -> LatentDiffusionModule:
    """The module SCRIPT builds from `spec`, in this process."""
    settings = spec["module"]
    metrics = [ClipScore(settings["clip"]), *settings["metrics"]]
    return LatentDiffusionModule(spec["model"], sampling=Sampling(**settings["sampling"]), metrics=metrics)


def spec_for(model: str, clip: str, out: Path, reference: Path | None = None) -> dict:
    data = {"reference": str(reference)} if reference else {}
    return {
        "model": model,
        "module": {"sampling": SETTINGS, "clip": clip, "metrics": ["fd_clip"] if reference else []},
        "data": {"prompts": PROMPTS, "batch_size": 2, **data},
        "out": str(out),
    }


@pytest.mark.ddp
def test_a_refused_folder_stops_both_processes_with_the_one_line(tiny_model, tiny_clip, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"fingerprint": "another run", "stage": "test"}))
    done = run_two_processes(tmp_path / "records", spec_for(tiny_model, tiny_clip, out))
    ended = time.time()
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    rank0, rank1 = records(tmp_path / "records")
    assert rank0["error"] == rank1["error"]  # the same one line on both
    assert rank0["error"].startswith(f"output_dir: {out} holds another run") and "\n" not in rank0["error"]
    # Both stop together and the run ends in seconds, instead of rank 1 waiting for the process group's timeout.
    assert abs(rank0["error_at"] - rank1["error_at"]) < 5 and ended - max(rank0["error_at"], rank1["error_at"]) < 30


@pytest.fixture(scope="module")
def resumed_on_two_processes(tiny_model, tiny_clip, tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """A `test` run with FD-CLIP in one process; the same run interrupted after 3 of 6 rows, resumed on two
    processes. Returns the whole run's folder, the resumed one, and what each rank of the resume recorded."""
    from ldm_lightning.shapes.reference import draw_reference

    root = tmp_path_factory.mktemp("resume")
    reference = root / "real"
    draw_reference(reference, PROMPTS[:4], per_prompt=2)
    spec = spec_for(tiny_model, tiny_clip, root / "whole", reference)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LDM_LIGHTNING_CACHE", str(root / "cache"))  # the reference's features, shared by both runs
        module = module_of(spec)
        quiet_trainer(callbacks=[ImageWriter(root / "whole")]).test(module, datamodule=PromptDataModule(**spec["data"]))
        # The interrupted run: rows 0-2 finished; row 3 has its image and features, rows 4 and 5 nothing.
        cut = root / "cut"
        cut.mkdir()
        for name in ["run.json", *(r["image"] for r in manifest(root / "whole")[:4])]:
            (cut / name).write_bytes((root / "whole" / name).read_bytes())
        (cut / "features").mkdir()
        for shard in ("rank0-000000.npz", "rank0-000002.npz"):
            (cut / "features" / shard).write_bytes((root / "whole" / "features" / shard).read_bytes())
        for name in ("manifest.jsonl", "results.jsonl"):
            lines = (root / "whole" / name).read_text().splitlines(keepends=True)
            (cut / name).write_text("".join(lines[:3]))
        # As conftest does for tests marked `ddp`: no other multi-process run beside this one.
        with open(tmp_path_factory.getbasetemp().parent / "ddp.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            done = run_two_processes(root / "records", {**spec, "out": str(cut)})
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "whole", cut, records(root / "records")


@pytest.mark.ddp
def test_each_process_appends_only_to_files_of_its_own(resumed_on_two_processes):
    whole, resumed, (rank0, rank1) = resumed_on_two_processes
    assert rank0["appended"] == ["manifest.jsonl", "results.jsonl"]
    assert rank1["appended"] == ["manifest-rank1.jsonl", "results-rank1.jsonl"]
    # Merged at the end: the files one process writes, nothing else.
    for name in ("manifest.jsonl", "results.jsonl"):
        assert [r["index"] for r in manifest(resumed, name)] == list(range(len(PROMPTS)))
        assert [r["image"] for r in manifest(resumed, name)] == [r["image"] for r in manifest(whole, name)]
    assert not list(resumed.glob("*-rank*"))
    summary, one = (json.loads((f / "summary.json").read_text()) for f in (resumed, whole))
    assert summary["n"] == one["n"] == len(PROMPTS)
    assert summary["clip_score_mean"] == pytest.approx(one["clip_score_mean"], abs=1e-3)
    assert summary["fd_clip"] == pytest.approx(one["fd_clip"], rel=1e-3)  # the restored rows' stored features


@pytest.mark.ddp
def test_only_rank_0_reads_what_an_earlier_run_left(resumed_on_two_processes):
    _, resumed, (rank0, rank1) = resumed_on_two_processes
    assert rank1["decoded"] == [] and rank1["loaded"] == []
    assert sorted(Path(p).name for p in rank0["decoded"]) == [r["image"] for r in manifest(resumed)[:3]]
    assert sorted(Path(p).name for p in rank0["loaded"]) == ["rank0-000000.npz", "rank0-000002.npz"]


def test_a_damaged_manifest_line_stops_the_run_naming_file_and_line(tiny_model, tmp_path, capsys):
    args = cli_args("predict", model=tiny_model, steps=2, prompts=json.dumps(PROMPTS), out=tmp_path / "run")
    assert run_cli(args)[0] == 0
    path = tmp_path / "run" / "manifest.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([lines[0], lines[1][:20] + "\n", *lines[2:4]]))  # rows 4 and 5 to be made again
    code, err = run_cli(args, capsys)
    assert code == 2
    line = err[err.rindex("error:") :].strip()
    assert line.startswith(f"error: {path}: line 2 is not a JSON row (") and "\n" not in line


def test_one_process_resumes_what_two_left_in_their_own_files(tiny_model, tmp_path):
    module = LatentDiffusionModule(tiny_model, sampling=Sampling(**SETTINGS))
    out = tmp_path / "run"
    quiet_trainer(callbacks=[ImageWriter(out)]).predict(module, datamodule=PromptDataModule(prompts=PROMPTS))
    # Two processes were stopped: rank 0 had written rows 0-2, rank 1 rows 3 and 4 (and was killed writing row 5).
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    (out / "manifest.jsonl").write_text("".join(lines[:3]))
    (out / "manifest-rank1.jsonl").write_text("".join(lines[3:5]) + lines[5][:30])
    images = [json.loads(line)["image"] for line in lines[:5]]
    written = {name: (out / name).stat().st_mtime_ns for name in images}
    data = PromptDataModule(prompts=PROMPTS)
    quiet_trainer(callbacks=[ImageWriter(out)]).predict(module, datamodule=data)
    assert data.skip == {0, 1, 2, 3, 4}  # rank 1's rows count as finished
    assert [r["index"] for r in manifest(out)] == list(range(len(PROMPTS)))
    assert not list(out.glob("*-rank*"))
    assert {name: (out / name).stat().st_mtime_ns for name in written} == written  # rows 0-4 were not made again
