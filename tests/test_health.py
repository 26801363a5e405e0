"""Numerical health: broken samples are flagged and left out of the mean; fp16 runs decode in fp32."""

import copy
import math

import numpy as np
import pytest
import scipy.stats
import torch
from diffusers import AutoencoderKL
from lightning import Trainer
from torch.utils.data import DataLoader

from ldm_lightning.data import PromptRows, collate, read_rows
from ldm_lightning.evaluation.summary import bootstrap_ci, summarize, timing
from ldm_lightning.generation.sampler import Sampling
from ldm_lightning.generation.sampling import decode
from ldm_lightning.module import LatentDiffusionModule


def loader(n: int = 2) -> DataLoader:
    return DataLoader(
        PromptRows(read_rows([f"prompt {i}" for i in range(n)], seed=0)), batch_size=n, collate_fn=collate
    )


def test_nan_latents_are_flagged(tiny_model):
    module = LatentDiffusionModule(tiny_model, sampling=Sampling(num_inference_steps=2, height=32, width=32))
    with torch.no_grad():
        module.unet.conv_out.bias.fill_(float("nan"))
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    rows = trainer.predict(module, loader())[0]
    assert [r["finite"] for r in rows] == [False, False]


def test_summary_leaves_broken_samples_out_of_the_mean():
    rows = [
        {"clip_score": 30.0, "finite": True, "black": False, "seconds": 1.0, "peak_memory_mb": 5.0},
        {"clip_score": 20.0, "finite": True, "black": False, "seconds": 1.0, "peak_memory_mb": 6.0, "truncated": True},
        {"clip_score": None, "finite": False, "black": False, "seconds": 1.0, "peak_memory_mb": 6.0},
        {"clip_score": None, "finite": True, "black": True, "seconds": 1.0, "peak_memory_mb": 6.0},
    ]
    s = summarize(rows)
    assert s["clip_score_mean"] == 25.0 and s["n"] == 2 and s["n_rows"] == 4
    assert (s["n_excluded"], s["n_nonfinite"], s["n_black"], s["n_truncated"]) == (2, 1, 1, 1)
    assert math.isclose(s["clip_score_std"], math.sqrt(50))


def test_bootstrap_interval_agrees_with_scipys():
    values = np.random.default_rng(1).normal(25.0, 5.0, size=200)
    low, high = bootstrap_ci(values)
    reference = scipy.stats.bootstrap(
        (values,), np.mean, method="percentile", n_resamples=2000, random_state=np.random.default_rng(2)
    ).confidence_interval
    half_width = 1.96 * values.std(ddof=1) / math.sqrt(len(values))  # the normal-theory interval's
    # Both are Monte-Carlo estimates (2000 resamples each): their ends differ by a few hundredths.
    assert abs(low - reference.low) < 0.15 * half_width and abs(high - reference.high) < 0.15 * half_width


def test_timing_leaves_each_processs_first_batch_out_of_the_steady_state():
    rows = [{"seconds": 9.0, "first_batch": True}] * 2 + [{"seconds": 1.0}] * 3 + [{"seconds": 2.0}] * 2
    steady = timing(rows)
    assert (steady["seconds_per_image"], steady["seconds_per_image_first_batch"]) == (1.0, 9.0)
    only_first = timing([{"seconds": 3.0, "first_batch": True}])  # one batch: it is all there is
    assert only_first["seconds_per_image"] == 3.0


def test_sixteen_bit_precision_decodes_the_vae_in_fp32(tiny_model):
    module = LatentDiffusionModule(tiny_model, sampling=Sampling(num_inference_steps=2, height=32, width=32))
    trainer = Trainer(
        accelerator="cpu", precision="16-true", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    rows = trainer.predict(module, loader())[0]
    # Decoded in fp32 on copies of the weights: the VAE itself stays in the trainer's precision.
    assert module.unet.dtype == torch.float16 and module.vae.dtype == torch.float16
    assert all(r["finite"] and not r["black"] for r in rows)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp32_decode_leaves_the_vae_as_it_is_and_equals_an_fp32_copy(tiny_model, dtype):
    vae = AutoencoderKL.from_pretrained(tiny_model, subfolder="vae").to(dtype)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    latents = torch.randn(2, vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = decode(vae, latents.to(dtype), force_fp32=True)
        reference = decode(copy.deepcopy(vae).float(), latents.to(dtype), force_fp32=False)
    assert all(p.dtype == dtype for p in vae.parameters())
    after = vae.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert images.dtype == torch.float32 and images.std() > 0.01
    assert torch.equal(images, reference)


def test_broken_images_count_as_wrong_in_geneval_and_are_left_out_of_other_scores():
    from ldm_lightning.evaluation.metrics import BROKEN_IMAGE_REASON, Aesthetic, GenEval, HPSv2, PickScore

    assert GenEval().for_broken_image() == {"geneval": 0.0, "geneval_reason": BROKEN_IMAGE_REASON}
    others = [PickScore(), HPSv2("hps.pt"), Aesthetic("aesthetic.pth")]  # nothing loads before `load`
    assert [m.for_broken_image() for m in others] == [{"pick_score": None}, {"hpsv2": None}, {"aesthetic": None}]
    # a description of how a column was computed (hpsv2_version) is not a score: kept for a broken image too
    assert "hpsv2_version" not in HPSv2("hps.pt").for_broken_image()


def test_geneval_keeps_broken_images_in_its_denominator(tiny_model, tiny_clip, tmp_path):
    # GenEval (evaluate_images.py) scores every image it is given and its accuracies divide by all of them
    # (summary_scores.py): an image whose latents went non-finite is a wrong answer, not a missing one.
    import json

    from ldm_lightning.data import PromptDataModule

    metadata = [
        {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"},
        {"tag": "single_object", "include": [{"class": "square", "count": 1}], "prompt": "a photo of a square"},
    ]
    prompts = tmp_path / "evaluation_metadata.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in metadata))
    from ldm_lightning.evaluation.metrics import ClipScore, GenEval

    module = LatentDiffusionModule(
        tiny_model,
        sampling=Sampling(num_inference_steps=2, height=32, width=32),
        metrics=[ClipScore(tiny_clip), GenEval(detector="shapes-judge")],
    )
    with torch.no_grad():
        module.unet.conv_out.bias.fill_(float("nan"))
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, PromptDataModule(str(prompts), batch_size=2), verbose=False)
    assert module.summary["n_nonfinite"] == 2 and module.summary["n"] == 0  # CLIPScore leaves them out
    assert module.summary["geneval_tasks"]["single_object"]["accuracy"] == 0.0
    assert module.summary["geneval_tasks"]["single_object"]["n"] == 2 and module.summary["geneval_overall"] == 0.0
