"""Anatomy and why-latent: exact SD v1.4 counts on the meta device, CLIs on tiny models."""

import copy
import json

import pytest
import torch
from diffusers import PNDMScheduler
from diffusers.models.attention_processor import Attention
from helpers import run_module
from torch import nn
from transformers.models.clip.modeling_clip import CLIPAttention

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


def count_by_hand(model: nn.Module, run) -> int:
    """FLOPs of `run()` from first principles, not from torch's counter: 2 per multiply-accumulate of every
    convolution (output size × input channels per group × kernel area), linear layer (output size × input
    features) and attention product (Q·Kᵀ and the weights times V: 2 × 2 × batch × queries × keys × width).
    """
    total = 0

    def conv(m, inputs, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inputs, out):
        nonlocal total
        total += 2 * out.numel() * m.in_features

    def attention(m, args, kwargs):
        nonlocal total
        x = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states")
        queries = x.shape[2] * x.shape[3] if x.ndim == 4 else x.shape[1]  # the VAE's attention takes (B, C, H, W)
        keys = queries if context is None else context.shape[1]
        width = m.to_q.out_features if isinstance(m, Attention) else m.embed_dim
        total += 4 * x.shape[0] * queries * keys * width

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear))
        elif isinstance(m, (Attention, CLIPAttention)):
            handles.append(m.register_forward_pre_hook(attention, with_kwargs=True))
    with torch.no_grad():
        run()
    for handle in handles:
        handle.remove()
    return total


def unet_by_hand(unet, batch: int) -> int:
    sample, text = torch.zeros(batch, 4, 64, 64, device="meta"), torch.zeros(batch, 77, 768, device="meta")
    return count_by_hand(
        unet, lambda: unet(sample, torch.full((batch,), 999, device="meta"), encoder_hidden_states=text)
    )


def test_sd14_unet_flops_per_step_equal_a_count_by_hand(sd14):
    cfg_batch = anatomy.unet_step_flops(sd14["unet"], (64, 64), batch=2)
    assert cfg_batch == unet_by_hand(sd14["unet"], batch=2)
    assert anatomy.unet_step_flops(sd14["unet"], (64, 64), batch=1) * 2 == cfg_batch


def test_sd14_vae_decode_flops_equal_a_count_by_hand(sd14):
    vae, latent = sd14["vae"], torch.zeros(1, 4, 64, 64, device="meta")
    assert anatomy.vae_decode_flops(vae, 512, 512) == count_by_hand(vae, lambda: vae.decode(latent))


def test_sd14_image_total_is_its_calls_counted_by_hand(sd14):
    # One image with guidance: 50 U-Net calls on a batch of 2, one decode, the text encoder on 2 prompts.
    report = anatomy.measure(sd14, 512, 512, steps=50, cfg=True)
    vae, text_encoder = sd14["vae"], sd14["text_encoder"]
    latent, ids = torch.zeros(1, 4, 64, 64, device="meta"), torch.zeros(2, 77, dtype=torch.long, device="meta")
    by_hand = (
        50 * unet_by_hand(sd14["unet"], batch=2)
        + count_by_hand(vae, lambda: vae.decode(latent))
        + count_by_hand(text_encoder, lambda: text_encoder(ids))
    )
    assert report["total_flops_per_image"] == by_hand


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


def test_scheduler_config_gives_the_compvis_noise_schedule_and_sd14s_timesteps():
    scheduler = PNDMScheduler.from_config(dict(SD14_SCHEDULER_CONFIG))
    # CompVis' v1-inference.yaml: linear_start 0.00085, linear_end 0.012, 1000 timesteps; LDM's "linear"
    # schedule is linear in √β (make_beta_schedule), and ᾱ_t = Π_{s≤t} (1 − β_s).
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), rtol=1e-5, atol=0)
    # 50 PLMS steps, one every 1000/50 = 20 timesteps from 1 (SD v1's steps_offset), with no Runge-Kutta warm-up.
    scheduler.set_timesteps(50)
    assert sorted(set(scheduler.timesteps.tolist())) == list(range(1, 1000, 20))
    assert len(scheduler.timesteps) == 51  # PLMS repeats one timestep to start its multistep history
    # The last step goes to ᾱ at t = 0, not to 1 (set_alpha_to_one false, as SD v1 was run).
    assert scheduler.final_alpha_cumprod == scheduler.alphas_cumprod[0] < 1
    ddim = build_scheduler("ddim", SD14_SCHEDULER_CONFIG)
    assert ddim.config.clip_sample is False  # latents are not clipped to [-1, 1]


def test_anatomy_cli_on_tiny_folder(tiny_model, tiny, tmp_path, capsys):
    out, png = tmp_path / "anatomy.json", tmp_path / "flops.png"
    args = ["--model", str(tiny_model), "--height", "64", "--width", "64", "--steps", "5"]
    assert run_module("ldm_lightning.lab.anatomy", [*args, "--json", str(out), "--plot", str(png)]) == 0
    stdout = capsys.readouterr().out
    assert "| U-Net |" in stdout and "real, in the folder" in stdout
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
