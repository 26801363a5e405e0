"""What a `test` run of tens of thousands of rows keeps: the summary's statistics in bounded memory, and every row
and feature gathered to rank 0 alone."""

import os
import socket

import numpy as np
import pytest
import torch

from ldm_lightning.evaluation.distribution import cmmd
from ldm_lightning.evaluation.rows import FeatureRows, ResultRows
from ldm_lightning.evaluation.summary import bootstrap_ci
from ldm_lightning.memory import peak_rss_delta


def test_the_bootstrap_interval_of_30000_scores_needs_no_resamples_by_rows_matrix():
    scores = np.random.default_rng(0).normal(70, 5, size=30_000)
    interval = []
    grew = peak_rss_delta(lambda: interval.extend(bootstrap_ci(scores)))
    if grew is None:
        pytest.skip("peak resident memory is read from Linux's /proc")
    # All 2,000 resamples at once: 2,000 × 30,000 indices and values, about 960 MB.
    assert grew < 64 * 2**20, f"the bootstrap's peak grew by {grew / 2**20:.0f} MiB"
    # The interval of the mean: mean ± 1.96 σ/√N to Monte-Carlo error.
    half = 1.96 * scores.std(ddof=1) / np.sqrt(len(scores))
    assert interval[0] == pytest.approx(scores.mean() - half, abs=0.1 * half)
    assert interval[1] == pytest.approx(scores.mean() + half, abs=0.1 * half)


def _cmmd_whole_matrices(real: np.ndarray, fake: np.ndarray, estimator: str) -> float:
    """CMMD with every kernel matrix whole, as google-research/cmmd's `distance.py` computes it (numpy here)."""
    x = real / np.linalg.norm(real, axis=1, keepdims=True)
    y = fake / np.linalg.norm(fake, axis=1, keepdims=True)
    gamma = 1 / (2 * 10.0**2)

    def kernel(a, b):
        squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-gamma * squared)

    def within(a):
        k = kernel(a, a)
        if estimator == "biased":
            return k.mean()
        return (k.sum() - np.trace(k)) / (len(a) * (len(a) - 1))

    return 1000 * (within(x) + within(y) - 2 * kernel(x, y).mean())


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_cmmd_in_blocks_equals_the_whole_kernel_matrices(estimator):
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(700, 16)), rng.normal(0.3, 1, size=(900, 16))
    expected = _cmmd_whole_matrices(real, fake, estimator)
    assert cmmd(real, fake, estimator=estimator) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_cmmd_of_12000_images_keeps_no_whole_kernel_matrix():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(500, 64)).astype(np.float32), rng.normal(size=(12_000, 64)).astype(np.float32)
    grew = peak_rss_delta(lambda: cmmd(real, fake))
    if grew is None:
        pytest.skip("peak resident memory is read from Linux's /proc")
    # The generated set's kernel matrix whole would be 12,000² float64 values: 1.1 GB.
    assert grew < 200 * 2**20, f"CMMD's peak grew by {grew / 2**20:.0f} MiB"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_on(rank: int, port: int, out: dict) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results, features = ResultRows(("clip_score",)), FeatureRows(["clip"])
        # Rank 0 holds rows 0, 2, 4; rank 1 rows 1, 3 and row 4 again (a process with nothing left repeats one).
        mine = [0, 2, 4] if rank == 0 else [1, 3, 4]
        rows = [{"index": i, "clip_score": 10.0 * i + rank, "seconds": 0.5} for i in mine]
        results.update(rows)
        features.update(mine, {"clip": np.array([[i, rank] for i in mine], dtype=np.float32)})
        out[rank] = (results.gathered(), features.gathered())
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.ddp
def test_rows_and_features_are_gathered_to_rank_0_alone():
    manager = torch.multiprocessing.get_context("spawn").Manager()
    out = manager.dict()
    port = _free_port()
    os.environ.pop("LOCAL_RANK", None)
    torch.multiprocessing.start_processes(_gather_on, args=(port, out), nprocs=2, start_method="spawn")
    rows, features = out[0]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    # Row 4 counts once: rank 0's (the first gathered).
    assert [r["clip_score"] for r in rows] == [0.0, 11.0, 20.0, 31.0, 40.0]
    assert features["index"].tolist() == [0, 1, 2, 3, 4]
    assert features["clip"].tolist() == [[0, 0], [1, 1], [2, 0], [3, 1], [4, 0]]
    assert out[1] == (None, None)


def test_free_heap_pages_go_back_to_the_system():
    from ldm_lightning.memory import _LIBC, _status_kib, release_free_heap

    if _LIBC is None:
        pytest.skip("malloc_trim is glibc's")
    # 256 MB in 64 KiB blocks (served from the heap, below glibc's mmap threshold); every 16th stays alive and pins
    # the heap's top, so freeing the rest leaves free pages in its middle that glibc keeps by itself.
    blocks = [bytearray(64 << 10) for _ in range(4096)]
    kept = blocks[::16]
    del blocks
    before = _status_kib("VmRSS")
    release_free_heap()
    released = before - _status_kib("VmRSS")
    assert released > 128 << 10, f"{released / 1024:.0f} MiB released"
    del kept


def test_each_predict_and_test_batch_releases_the_free_heap(monkeypatch, tiny_module):
    from ldm_lightning import module as module_file

    calls = []
    monkeypatch.setattr(module_file, "release_free_heap", lambda: calls.append(1))
    tiny_module.on_predict_batch_end([], {}, 0)
    tiny_module.on_test_batch_end([], {}, 0)
    assert len(calls) == 2
