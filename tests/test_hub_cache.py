"""A model read offline from the Hugging Face hub cache by its hub id, as `hf download` leaves it: `predict`, `test`
and `fit` load every part, and `fit`'s export is a complete folder that diffusers' own pipeline draws the same from."""

import huggingface_hub
import pytest
import torch
from helpers import cli_args, diffusers_images, manifest, optimizer_args, pixels, run_cli
from test_sampling import NEGATIVES, PROMPTS, SEEDS, batch_of

from ldm_lightning.generation.components import load_components
from ldm_lightning.generation.guidance import ClassifierFreeGuidance
from ldm_lightning.generation.sampler import Sampling
from ldm_lightning.generation.sampling import to_uint8
from ldm_lightning.module import LatentDiffusionModule
from ldm_lightning.testing import save_as_hub_cache

HUB_ID = "tiny-org/tiny-sd"
SETTINGS = {
    "sampling": Sampling(num_inference_steps=4, height=32, width=32),
    "guidance": ClassifierFreeGuidance(3.0),
}


@pytest.fixture
def hub_model(tiny_model, tmp_path, monkeypatch) -> str:
    """The tiny model's hub id, cached as `hf download` caches it (tests run with HF_HUB_OFFLINE=1)."""
    cache = tmp_path / "hub"
    # As in SD v1.4's repository, the tokenizer is vocab.json + merges.txt, with no tokenizer.json and no config.json.
    save_as_hub_cache(tiny_model, cache, HUB_ID, leave_out=("tokenizer/tokenizer.json",))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # what HF_HUB_CACHE=<cache> sets
    return HUB_ID


def test_predict_and_test_read_every_part_from_the_hub_cache(hub_model, tiny_model, tiny_clip, tmp_path):
    prompts = '["a red circle", "blue ../ square ünïcode"]'
    for model, out in ((hub_model, tmp_path / "hub-run"), (tiny_model, tmp_path / "folder-run")):
        assert run_cli(cli_args("predict", model=model, steps=3, prompts=prompts, out=out))[0] == 0
    from_hub, from_folder = manifest(tmp_path / "hub-run"), manifest(tmp_path / "folder-run")
    assert len(from_hub) == 2
    for a, b in zip(from_hub, from_folder):
        assert (pixels(tmp_path / "hub-run", a) == pixels(tmp_path / "folder-run", b)).all()
    args = cli_args("test", model=hub_model, clip=tiny_clip, steps=3, prompts=prompts, out=tmp_path / "test")
    assert run_cli(args)[0] == 0
    assert len(manifest(tmp_path / "test", "results.jsonl")) == 2


def test_the_embedded_models_tokenizer_loads_from_the_hub_cache(tmp_path, monkeypatch):
    from ldm_lightning.generation.components import EMBEDDED

    save_as_hub_cache(EMBEDDED["tiny-shapes"], tmp_path / "hub", "tiny-org/shapes")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cached, shipped = load_components("tiny-org/shapes").tokenizer, load_components("tiny-shapes").tokenizer
    words = ["a red circle", "a blue square"]
    assert cached(words)["input_ids"] == shipped(words)["input_ids"]
    assert shipped.unk_token_id not in sum(shipped(words)["input_ids"], [])  # its own word-level vocabulary


def test_fit_from_the_hub_cache_exports_a_complete_folder_diffusers_draws_the_same_from(hub_model, tmp_path):
    args = cli_args(
        "fit",
        *optimizer_args(1e-3, 2),
        "--data=ldm_lightning.shapes.data.ShapesDataModule",
        "--data.batch_size=4",
        "--data.num_samples=8",
        "--trainer.max_steps=2",
        model=hub_model,
        size=None,
        out=tmp_path / "run",
    )
    assert run_cli(args)[0] == 0
    exported = next((tmp_path / "run").rglob("model"))
    assert {"model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= {
        p.name for p in exported.iterdir()
    }
    # The export is the trained model: the checkpoint's U-Net, reloaded through the hub id.
    trained = LatentDiffusionModule.load_from_checkpoint(next((tmp_path / "run").rglob("*.ckpt")), **SETTINGS)
    module = LatentDiffusionModule(str(exported), **SETTINGS)
    assert all(torch.equal(p, trained.unet.state_dict()[k]) for k, p in module.unet.state_dict().items())
    batch = batch_of(PROMPTS, NEGATIVES, SEEDS)
    ours = to_uint8(module.sample(batch)[0].images).int()
    reference = to_uint8(diffusers_images(exported, batch, steps=4, size=32, guidance_scale=3.0)).int()
    assert (ours - reference).abs().max() <= 1  # one 8-bit level at most
