"""Anatomy and why-latent: exact SD v1.4 counts on the meta device, CLIs on tiny models."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from diffusers import PNDMScheduler

from ldm_lightning.generation.components import load_components
from ldm_lightning.generation.schedulers import SD14_SCHEDULER_CONFIG, build_scheduler
from ldm_lightning.lab import anatomy, why_latent
from ldm_lightning.lab.architectures import SD14_UNET, build_sd14


@pytest.fixture(scope="module")
def sd14():
    return build_sd14("meta")


@pytest.fixture(scope="module")
def tiny(tiny_model) -> dict:
    """The tiny random model's components (conftest's diffusers fast-test-sized folder)."""
    components = load_components(tiny_model)
    return {"unet": components.unet, "vae": components.vae, "text_encoder": components.text_encoder}


def test_sd14_parameter_counts_are_exact(sd14):
    # Parameter counts of the released CompVis/stable-diffusion-v1-4 checkpoint.
    assert anatomy.count_params(sd14["unet"]) == 859_520_964
    assert anatomy.count_params(sd14["vae"]) == 83_653_863
    assert anatomy.count_params(sd14["text_encoder"]) == 123_060_480
    vae = sd14["vae"]
    halves = anatomy.count_params(vae.encoder, vae.quant_conv) + anatomy.count_params(vae.decoder, vae.post_quant_conv)
    assert halves == 83_653_863
    assert all(p.is_meta for m in sd14.values() for p in m.parameters())


def test_sd14_latent_shape_and_compression(sd14):
    assert anatomy.latent_shape(sd14["vae"], 512, 512) == (4, 64, 64)
    assert anatomy.compression(sd14["vae"], 512, 512) == 48.0  # 3·512·512 / (4·64·64)
    with pytest.raises(ValueError, match="multiples of 8"):
        anatomy.latent_shape(sd14["vae"], 500, 512)


def test_sd14_unet_flops_per_sample(sd14):
    # Expected ≈0.80 TFLOP per sample per step at a 64×64 latent (the commonly quoted figure;
    # FLOPs = 2 × multiply-adds). Counted: 1,606,546,882,560 for the CFG batch of 2, i.e.
    # 803,273,441,280 per sample, of which 126 GFLOP is attention (SDPA) matmuls.
    cfg_batch = anatomy.unet_step_flops(sd14["unet"], (64, 64), batch=2)
    assert cfg_batch / 2 == pytest.approx(0.80e12, rel=0.05)
    assert anatomy.unet_step_flops(sd14["unet"], (64, 64), batch=1) * 2 == cfg_batch


def test_sd14_vae_decode_flops(sd14):
    # Expected ≈2.5 TFLOP for one 512² decode (the commonly quoted figure); counted: 2,514,518,933,504.
    assert anatomy.vae_decode_flops(sd14["vae"], 512, 512) == pytest.approx(2.5e12, rel=0.10)


def test_sd14_image_total(sd14):
    # 50 CFG steps + one decode + one text-encoder call on 2 prompts: ≈82.9 TFLOP (the sum of the two figures above).
    report = anatomy.measure(sd14, 512, 512, steps=50, cfg=True)
    assert report["total_flops_per_image"] == pytest.approx(82.9e12, rel=0.01)
    text = next(r for r in report["components"] if r["name"] == "text encoder")
    assert 0 < text["flops_per_call"] < 0.05e12


def test_attention_counted_on_cpu_as_on_meta(tiny):
    # torch's counter has no formula for CPU flash attention; anatomy.count_flops adds it, so real
    # CPU tensors and meta tensors (where SDPA decomposes into counted bmm's) must agree.
    unet = tiny["unet"]
    cpu = anatomy.unet_step_flops(unet, (32, 32), batch=2)
    meta = anatomy.unet_step_flops(copy.deepcopy(unet).to("meta"), (32, 32), batch=2)
    assert cpu == meta
    sample, text = torch.zeros(2, 4, 32, 32), torch.zeros(2, 77, 32)
    counter = torch.utils.flop_counter.FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(sample, 1, encoder_hidden_states=text)
    assert counter.get_total_flops() < cpu  # what plain FlopCounterMode misses on CPU


def test_scheduler_config_builds_pndm():
    scheduler = PNDMScheduler.from_config(dict(SD14_SCHEDULER_CONFIG))
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.skip_prk_steps and scheduler.config.steps_offset == 1
    assert scheduler.config.set_alpha_to_one is False
    assert build_scheduler("ddim", SD14_SCHEDULER_CONFIG).config.clip_sample is False  # latents are not clipped


def test_anatomy_cli_on_tiny_folder(tiny_model, tiny, tmp_path):
    out, png = tmp_path / "anatomy.json", tmp_path / "flops.png"
    cmd = [
        sys.executable,
        "-m",
        "ldm_lightning.lab.anatomy",
        "--model",
        str(tiny_model),
        "--height",
        "64",
        "--width",
        "64",
        "--steps",
        "5",
        "--json",
        str(out),
        "--plot",
        str(png),
    ]
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=60, env=os.environ | {"HF_HUB_OFFLINE": "1"}
    )
    assert proc.returncode == 0, proc.stderr
    assert "| U-Net |" in proc.stdout and "real, in the folder" in proc.stdout
    report = json.loads(out.read_text())
    params = {r["name"]: r["params"] for r in report["components"]}
    assert params["U-Net"] == anatomy.count_params(tiny["unet"])
    assert params["text encoder"] == anatomy.count_params(tiny["text_encoder"])
    assert report["latent_shape"] == [4, 32, 32] and report["compression"] == 3.0
    assert png.stat().st_size > 0


def test_anatomy_rejects_unknown_model(tmp_path):
    with pytest.raises(ValueError, match="sd14"):
        anatomy.load_modules(str(tmp_path))


def test_sd_layout_matches_sd14():
    config = why_latent.sd_layout_unet((320, 640, 1280, 1280), heads=8)
    assert config == SD14_UNET


def test_why_latent_small():
    result = why_latent.why_latent(latent_side=8, downsample=4, widths=(32, 64), repeats=1, threads=1, sd14=False)
    lat, pix = result["latent"], result["pixel"]
    assert lat["shape"] == [4, 8, 8] and pix["shape"] == [3, 32, 32]
    assert pix["flops"] > 16 * lat["flops"] * 0.5  # 16× the positions, fixed text-side costs
