"""Two machines, simulated on one: Lightning's multi-node DDP under `torchrun`, one process per node, CPU and gloo."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_args, manifest, pixels, run_cli

PROMPTS = json.dumps([f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "star", "cross")])
N = 9


def args_for(model: str, clip: str, out: Path, steps: int) -> list[str]:
    return cli_args("test", model=model, clip=clip, steps=steps, prompts=PROMPTS, batch_size=1, out=out, logger=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_nodes(args_per_node: list[list[str]]) -> list[subprocess.Popen]:
    """One `torchrun` per node, as each machine of a cluster would run it (docs/how-to/many-gpus.md)."""
    port, nodes = free_port(), []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for rank, args in enumerate(args_per_node):
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"]
        torchrun += [f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}"]
        trainer = [
            "--trainer.num_nodes=2",
            "--trainer.devices=1",
            "--trainer.accelerator=cpu",
            "--trainer.strategy=ddp",
        ]
        cmd = ["timeout", "-k", "10", "300", *torchrun, "-m", "ldm_lightning", *args, *trainer]
        nodes.append(
            subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
            )
        )
    return nodes


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def finish(nodes: list[subprocess.Popen]) -> list[str]:
    errors = [node.communicate()[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(e[-1500:] for e in errors)
    return errors


def check_against(folder: Path, reference: Path) -> None:
    """Every prompt exactly once (9 prompts on 2 ranks: no padded duplicate), the same images (to one 8-bit
    level) and scores (to 1e-3) as one process."""
    rows = manifest(folder, "results.jsonl")
    assert [r["index"] for r in rows] == list(range(N))
    assert len(manifest(folder)) == N  # the manifest too: nothing lost, nothing twice
    for a, b in zip(rows, manifest(reference, "results.jsonl")):
        assert a["prompt"] == b["prompt"] and abs(a["clip_score"] - b["clip_score"]) <= 1e-3
        assert np.abs(pixels(folder, a) - pixels(reference, b)).max() <= 1
    summary, one = (json.loads((f / "summary.json").read_text()) for f in (folder, reference))
    assert summary["n"] == one["n"] == N
    assert abs(summary["clip_score_mean"] - one["clip_score_mean"]) <= 1e-3


@pytest.mark.ddp
def test_two_nodes_lose_a_node_and_resume_to_the_rows_of_one_process(tiny_model, tiny_clip, tmp_path):
    steps = 16  # slow enough that a node can be lost mid-run
    assert run_cli(args_for(tiny_model, tiny_clip, tmp_path / "one", steps))[0] == 0

    # Two nodes start; node 1 dies mid-run (a machine lost), the scheduler ends the job, and it is started
    # again as it was. Both halves of the rows come from two nodes.
    args = args_for(tiny_model, tiny_clip, tmp_path / "lost", steps)
    nodes = launch_nodes([args] * 2)
    results = tmp_path / "lost" / "results.jsonl"
    deadline = time.monotonic() + 120
    while not (results.is_file() and results.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    kill_tree(nodes[1].pid)
    time.sleep(1)
    kill_tree(nodes[0].pid)  # its next collective would wait for node 1 forever
    for node in nodes:
        node.communicate()
    assert 0 < len(manifest(tmp_path / "lost", "results.jsonl")) < N  # stopped mid-run
    finish(launch_nodes([args] * 2))
    check_against(tmp_path / "lost", tmp_path / "one")


@pytest.mark.ddp
def test_ranks_that_do_not_share_the_output_folder_are_told(tiny_model, tiny_clip, tmp_path):
    # Two machines writing to node-local disks: each node sees only its own folder.
    nodes = launch_nodes([args_for(tiny_model, tiny_clip, tmp_path / f"node{i}", steps=2) for i in range(2)])
    errors = [node.communicate()[1] for node in nodes]
    assert all(node.returncode != 0 for node in nodes)
    assert all("error: output_dir: not every rank sees" in err for err in errors), errors[0][-1500:]
    assert all("Traceback" not in err[: err.find("error: output_dir")] for err in errors)
    assert not list((tmp_path / "node1").glob("*.png"))
