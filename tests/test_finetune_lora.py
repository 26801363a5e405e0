"""LoRA adapters: what trains, the saved file diffusers' own pipeline loads, and the same images from both."""

import pytest
import torch
from test_sampling import NEGATIVES, PROMPTS, SEEDS, batch_of

from ldm_lightning.errors import UserError
from ldm_lightning.finetune.lora import add_lora, load_lora, save_lora
from ldm_lightning.generation.guidance import ClassifierFreeGuidance
from ldm_lightning.generation.sampler import Sampling
from ldm_lightning.generation.sampling import to_uint8
from ldm_lightning.module import LatentDiffusionModule
from ldm_lightning.testing import reference_pipeline

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def fresh(tiny_model) -> LatentDiffusionModule:
    sampling = Sampling(num_inference_steps=4, height=32, width=32)
    return LatentDiffusionModule(tiny_model, sampling=sampling, guidance=ClassifierFreeGuidance(3.0))


def test_only_the_adapters_train_and_their_size_is_rank_times_in_plus_out(tiny_model):
    unet = fresh(tiny_model).unet
    linears = [m for n, m in unet.named_modules() if n.endswith(TARGETS) and isinstance(m, torch.nn.Linear)]
    expected = sum(4 * (m.in_features + m.out_features) for m in linears)  # A: r×in, B: out×r (Hu et al. 2021)
    assert add_lora(unet, rank=4) == expected
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_saved_lora_gives_the_same_images_in_diffusers_pipeline_and_in_our_sampler(tiny_model, tmp_path):
    trained = fresh(tiny_model)
    add_lora(trained.unet, rank=4, alpha=8)  # alpha ≠ rank: the file must carry the scale 8/4
    torch.manual_seed(0)
    with torch.no_grad():  # stands in for training: the up-projections leave zero
        for name, p in trained.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    save_lora(trained.unet, tmp_path / "lora")

    ours = fresh(tiny_model)
    base = ours.sample(batch_of(PROMPTS, NEGATIVES, SEEDS))[0].images
    load_lora(ours.unet, tmp_path / "lora", scale=0.6)
    images = ours.sample(batch_of(PROMPTS, NEGATIVES, SEEDS))[0].images

    pipe = reference_pipeline(fresh(tiny_model).components, "ddim")
    pipe.load_lora_weights(str(tmp_path / "lora"), adapter_name="tuned")
    pipe.set_adapters(["tuned"], adapter_weights=[0.6])
    generators = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    reference = pipe(
        PROMPTS,
        negative_prompt=NEGATIVES,
        generator=generators,
        num_inference_steps=4,
        guidance_scale=3.0,
        height=32,
        width=32,
        output_type="pt",
    ).images

    assert (images - base).abs().max() > 0.05  # the LoRA changes the images
    difference = (to_uint8(images).int() - to_uint8(reference).int()).abs().max().item()
    assert difference <= 1, difference  # one 8-bit level at most
    trained.unet.set_adapters("default", weights=0.6)  # and the file holds exactly what was trained
    assert (trained.sample(batch_of(PROMPTS, NEGATIVES, SEEDS))[0].images - images).abs().max() <= 1e-5


def test_lora_errors_are_one_line(tiny_model, tmp_path):
    with pytest.raises(UserError, match="model.lora.path: no LoRA file at"):
        load_lora(fresh(tiny_model).unet, tmp_path / "nothing")
    with pytest.raises(UserError, match="model.finetune.target_modules:"):
        add_lora(fresh(tiny_model).unet, rank=2, target_modules=["no_such_layer"])
    with pytest.raises(UserError, match="model.finetune.rank: must be at least 1"):
        add_lora(fresh(tiny_model).unet, rank=0)
