"""Long runs: memory flat in the number of images; a full disk and SIGTERM stop cleanly and resume to the same end."""

import errno
import functools
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_args, manifest, metrics_arg, pixels, run_cli

PROMPTS = json.dumps(
    [f"a {c} {s}" for c in ("red", "blue", "green", "white") for s in ("circle", "star", "cross", "square")]
)


def args_for(model: str, out: Path, *extra: str, subcommand: str = "predict") -> list[str]:
    return cli_args(subcommand, *extra, model=model, prompts=PROMPTS, out=out, logger=False)


def start(args: list[str], file_size_limit: int | None = None) -> subprocess.Popen:
    """The CLI in a child process (signals and resource limits must not touch the test process)."""

    def limit() -> None:
        if file_size_limit is not None:
            # A write past the limit fails with EFBIG, as a full disk fails with ENOSPC (no root needed).
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = ["timeout", "-k", "10", "180", sys.executable, "-m", "ldm_lightning", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=limit)


def assert_whole(folder: Path, name: str = "manifest.jsonl") -> list[dict]:
    """No temporary files; every line of the manifest (or results) is whole, and its image is on disk."""
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")] == []
    rows = manifest(folder, name)  # json.loads of every line: a torn line fails here
    for row in rows:
        assert pixels(folder, row).shape == (32, 32, 3)
    return rows


def assert_same_images(folder: Path, reference: Path, name: str = "manifest.jsonl") -> None:
    rows, ref = manifest(folder, name), manifest(reference, name)
    assert [r["index"] for r in rows] == [r["index"] for r in ref] == list(range(16))  # each exactly once
    for a, b in zip(rows, ref):
        assert np.abs(pixels(folder, a) - pixels(reference, b)).max() == 0


def test_predict_keeps_no_images_in_memory(tiny_model, tmp_path, monkeypatch):
    from lightning import Trainer

    returned = []  # what Trainer.predict hands back, and what its loop still holds
    original = Trainer.predict

    @functools.wraps(original)  # the CLI reads predict's signature for its arguments
    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        returned.append((out, self.predict_loop._predictions))
        return out

    monkeypatch.setattr(Trainer, "predict", spy)
    steps = "--model.sampling.num_inference_steps=2"
    assert run_cli(args_for(tiny_model, tmp_path / "a", steps, "--data.batch_size=4"))[0] == 0
    assert returned[0] == (None, [])  # the CLI does not ask Lightning to keep every batch's rows
    # Asked for them explicitly, the rows come back without their pixels (the writer consumed them).
    extra = ("--model.sampling.num_inference_steps=2", "--data.batch_size=4", "--return_predictions=true")
    assert run_cli(args_for(tiny_model, tmp_path / "b", *extra))[0] == 0
    rows = [row for batch in returned[1][0] for row in batch]
    assert sorted(r["index"] for r in rows) == list(range(16))
    assert not any("pixels" in r for r in rows)


def test_test_keeps_no_images_in_memory(tiny_model, tiny_clip, tmp_path, monkeypatch):
    from ldm_lightning.module import LatentDiffusionModule

    outputs = []  # every row test_step returned, as Lightning and the callbacks see it
    original = LatentDiffusionModule.test_step
    monkeypatch.setattr(
        LatentDiffusionModule, "test_step", lambda self, *a: (rows := original(self, *a), outputs.extend(rows))[0]
    )
    extra = (
        "--model.sampling.num_inference_steps=2",
        f"--model.metrics={metrics_arg(clip=tiny_clip)}",
        "--data.batch_size=8",
    )
    assert run_cli(args_for(tiny_model, tmp_path / "run", *extra, subcommand="test"))[0] == 0
    assert len(outputs) == 16 and not any("pixels" in r for r in outputs)


def test_full_disk_stops_cleanly_and_the_same_command_resumes(tiny_model, tmp_path):
    args = args_for(tiny_model, tmp_path / "run", "--model.sampling.num_inference_steps=2", "--data.batch_size=2")
    full = start(args, file_size_limit=4000)  # the manifest outgrows it after about 10 rows
    _, err = full.communicate()
    assert full.returncode == 2, err[-2000:]
    assert "Traceback" not in err
    line = err[err.rindex("error: ") :].strip()
    assert "manifest.jsonl" in line and "run the same command again" in line and "\n" not in line
    done = assert_whole(tmp_path / "run")
    assert 0 < len(done) < 16
    # Space freed: the same command finishes the run, keeping what was done.
    kept = {r["image"]: (tmp_path / "run" / r["image"]).stat().st_mtime_ns for r in done}
    assert run_cli(args)[0] == 0
    assert {name: (tmp_path / "run" / name).stat().st_mtime_ns for name in kept} == kept
    assert_whole(tmp_path / "run")
    whole = args_for(tiny_model, tmp_path / "whole", "--model.sampling.num_inference_steps=2", "--data.batch_size=2")
    assert run_cli(whole)[0] == 0
    assert_same_images(tmp_path / "run", tmp_path / "whole")


def test_sigterm_stops_after_the_batch_in_flight_and_resumes_to_the_same_scores(tiny_model, tiny_clip, tmp_path):
    # Enough steps that the run is still going when the signal comes; 16 prompts in batches of 2.
    extra = (
        "--model.sampling.num_inference_steps=12",
        f"--model.metrics={metrics_arg(clip=tiny_clip)}",
        "--data.batch_size=2",
    )
    args = args_for(tiny_model, tmp_path / "run", *extra, subcommand="test")
    run = start(args)
    results = tmp_path / "run" / "results.jsonl"
    deadline = time.monotonic() + 150
    while not (results.is_file() and results.read_text()) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)  # SIGTERM to the CLI process itself (timeout passes it on)
    _, err = run.communicate()
    assert run.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "run the same command again to resume" in err
    done = assert_whole(tmp_path / "run", "results.jsonl")
    assert 0 < len(done) < 16 and not (tmp_path / "run" / "summary.json").exists()
    assert run_cli(args)[0] == 0  # the same command again
    assert run_cli(args_for(tiny_model, tmp_path / "whole", *extra, subcommand="test"))[0] == 0
    assert_same_images(tmp_path / "run", tmp_path / "whole", "results.jsonl")
    scores = [r["clip_score"] for r in manifest(tmp_path / "run", "results.jsonl")]
    reference = [r["clip_score"] for r in manifest(tmp_path / "whole", "results.jsonl")]
    assert np.allclose(scores, reference, atol=1e-6)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["n"] == whole["n"] == 16
    assert abs(summary["clip_score_mean"] - whole["clip_score_mean"]) <= 1e-6


@pytest.fixture
def small_disk(tmp_path):
    """A 400 KiB tmpfs: a real full disk (ENOSPC), which TensorBoard's writer thread meets as well."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root with CAP_SYS_ADMIN: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_under_tensorboard_prints_one_line(tiny_model, tiny_clip, small_disk):
    prompts = json.dumps([f"a red circle number {i}" for i in range(60)])
    # The default logger: TensorBoard, which writes each batch's images from its own thread.
    args = cli_args(
        "test", model=tiny_model, clip=tiny_clip, steps=1, prompts=prompts, batch_size=4, out=small_disk / "run"
    )
    run = start(args)
    _, err = run.communicate()
    assert run.returncode == 2, err[-2000:]
    assert "Traceback" not in err and "Exception in thread" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.strip().endswith(errors[0]), err[-2000:]
    assert "No space left on device" in errors[0] and "run the same command again" in errors[0]


def test_only_write_errors_handed_over_by_the_event_writer_are_kept_off_the_console():
    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    from ldm_lightning.console import _QuietEventWriterErrors

    printed = []
    hook = _QuietEventWriterErrors(printed.append)

    def thread_error(thread: threading.Thread, error: BaseException) -> threading.ExceptHookArgs:
        return threading.ExceptHookArgs((type(error), error, None, thread))

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    event_writer = _AsyncWriterThread(queue.Queue(), record_writer=None, flush_secs=120)
    event_writer.exception = full  # what the thread does before it re-raises: the main thread raises it next
    hook(thread_error(event_writer, full))
    assert printed == []
    shown = [
        thread_error(threading.Thread(), full),  # another thread's full disk: nobody else reports it
        thread_error(event_writer, OSError(errno.ENOSPC, "not the one handed over")),
    ]
    bug = ValueError("a bug")
    event_writer.exception = bug
    shown.append(thread_error(event_writer, bug))  # not a write error the command line explains
    for args in shown:
        hook(args)
    assert printed == shown
