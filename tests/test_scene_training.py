"""The recipes' switch to the scene world: items, contrastive targets, VAE and cached latents at the scene size."""

import dataclasses

import numpy as np
import pytest
import torch

from ldm_lightning.shapes.clip import contrastive_loss
from ldm_lightning.shapes.latents import ShapesLatentDataModule, encode_shapes
from ldm_lightning.shapes.scene import CANVAS_PX, CONVERSE, render_scene, scene_at
from ldm_lightning.shapes.scene_caption import describe, matches_scene, varied
from ldm_lightning.shapes.scene_data import ScenesDataset
from ldm_lightning.shapes.vae import build_vae, train_vae


def test_items_are_scenes_with_their_captions() -> None:
    a, b = ScenesDataset(20, seed=2, p_empty_caption=0.2), ScenesDataset(20, seed=2, p_empty_caption=0.2)
    for i in range(20):
        item = a[i]
        assert item["prompt"] == b[i]["prompt"] and torch.equal(item["pixel_values"], b[i]["pixel_values"])
        assert item["pixel_values"].shape == (3, CANVAS_PX, CANVAS_PX)
        expected = np.asarray(render_scene(scene_at(i, "train", 2).objects), np.float32) / 127.5 - 1
        torch.testing.assert_close(item["pixel_values"], torch.from_numpy(expected).permute(2, 0, 1))
        assert matches_scene(item["prompt"], scene_at(i, "train", 2)), item["prompt"]
    empty = sum(ScenesDataset(1000, p_empty_caption=0.1)[i]["prompt"] == "" for i in range(1000))
    assert 60 < empty < 140


def test_captions_fit_their_own_scene_and_not_a_changed_claim() -> None:
    rng = np.random.default_rng(1)
    scenes = [scene_at(i, "all", seed=9) for i in range(600)]
    for scene in scenes:
        assert matches_scene(describe(scene.claim), scene) and matches_scene(varied(scene.claim, rng), scene)
        claim = scene.claim
        if claim.kind == "counting":
            for n in {2, 3, 4} - {claim.groups[0].count}:
                more = dataclasses.replace(claim, groups=(dataclasses.replace(claim.groups[0], count=n),))
                assert not matches_scene(describe(more), scene)
        if claim.relation is not None:
            assert not matches_scene(describe(dataclasses.replace(claim, relation=CONVERSE[claim.relation])), scene)
    prompts = [describe(s.claim) for s in scenes[:32]]
    logits = torch.zeros(32, 32)
    loss = contrastive_loss(logits, prompts, scenes[:32], matches_scene)
    # With equal logits the loss is the mean log of the number of candidates: log 32 on both sides.
    assert loss.item() == pytest.approx(np.log(32), rel=1e-5)


def test_vae_and_latents_train_on_scenes() -> None:
    torch.manual_seed(0)
    vae = build_vae(sample_size=CANVAS_PX)
    losses = train_vae(vae, 3, batch_size=2, warmup=1, log_every=0, world="scenes")
    assert all(np.isfinite(losses))
    mean, std, scenes = encode_shapes(vae.eval(), 4, seed=0, world="scenes")
    assert mean.shape == std.shape == (4, 4, CANVAS_PX // 4, CANVAS_PX // 4)
    assert scenes == [scene_at(i, "train", 0) for i in range(4)]
    with pytest.raises(ValueError, match="data.world"):
        ShapesLatentDataModule("tiny-shapes", world="pictures")
