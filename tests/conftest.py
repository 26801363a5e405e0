"""Shared fixtures: offline, one thread, and a tiny seeded SD-v1-shaped model saved as a diffusers folder."""

import copy
import fcntl
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two busy cores: one thread per test process is far steadier (and DDP tests run two processes).
# Set here once: the tests' own processes and every process they start inherit it.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_multiprocess_run_at_a_time(request, tmp_path_factory):
    """Tests marked `ddp` start several processes; under `pytest -n 2` (the README's test command) each waits
    for a lock shared by the workers, so that no two multi-process runs ever compete for the two cores."""
    if request.node.get_closest_marker("ddp") is None:
        yield
        return
    with open(tmp_path_factory.getbasetemp().parent / "ddp.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Path of a tiny random diffusers folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/)."""
    from ldm_lightning.testing import build_tiny_random

    return str(build_tiny_random(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def tiny_module_built_once(tiny_model):
    """A LatentDiffusionModule on the tiny model, 32×32 pixels, 4 DDIM steps; never handed to a test itself."""
    from ldm_lightning.generation.sampler import Sampling
    from ldm_lightning.module import LatentDiffusionModule

    return LatentDiffusionModule(tiny_model, sampling=Sampling(num_inference_steps=4, height=32, width=32))


@pytest.fixture
def tiny_module(tiny_module_built_once):
    """A fresh copy of the tiny module for each test, so that settings one test changes never reach another."""
    return copy.deepcopy(tiny_module_built_once)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """Path of a tiny random CLIP folder (model, tokenizer, image processor)."""
    from ldm_lightning.testing import build_tiny_clip

    return str(build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip"))
