"""Real Stable Diffusion v1.4 weights, when they are present (LDM_SD14=/path/to/folder or a cached hub id)."""

import os

import pytest
import torch

SD14 = os.environ.get("LDM_SD14")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SD14, reason="set LDM_SD14 to a Stable Diffusion v1.4 folder or cached hub id"),
]


def test_sd14_matches_the_pipeline_at_256(capsys):

    from ldm_lightning import ClassifierFreeGuidance, Sampling
    from ldm_lightning.data import collate, read_rows
    from ldm_lightning.module import LatentDiffusionModule
    from ldm_lightning.testing import reference_pipeline

    sampling = Sampling(scheduler="pndm", num_inference_steps=3, height=256, width=256)
    module = LatentDiffusionModule(SD14, sampling=sampling, guidance=ClassifierFreeGuidance(7.5))
    rows = read_rows(["a photograph of an astronaut riding a horse"], seed=0)
    ours = module.sample(collate(rows))[0].images
    components = module.components
    pipe = reference_pipeline(components, "pndm")
    ref = pipe(
        rows[0]["prompt"],
        generator=torch.Generator("cpu").manual_seed(0),
        num_inference_steps=3,
        guidance_scale=7.5,
        height=256,
        width=256,
        output_type="pt",
    ).images
    assert (ours - ref).abs().max().item() <= 1e-5
