"""`fit`'s export: a LoRA applied with `model.lora` is fused into the U-Net, so that a whole-U-Net fit (EMA included)
trains plain weights and exports diffusers' own key names; diffusers' pipeline draws from it what the module draws."""

import pytest
import torch
from helpers import diffusers_images, quiet_trainer, set_learning_rate
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from safetensors import safe_open
from test_sampling import NEGATIVES, PROMPTS, SEEDS, batch_of

from ldm_lightning.errors import UserError
from ldm_lightning.finetune.lora import LoraFile, add_lora, has_adapters, save_lora
from ldm_lightning.finetune.method import LoRA
from ldm_lightning.generation.export import save_pipeline
from ldm_lightning.generation.guidance import ClassifierFreeGuidance
from ldm_lightning.generation.sampler import Sampling
from ldm_lightning.generation.sampling import to_uint8
from ldm_lightning.module import LatentDiffusionModule
from ldm_lightning.shapes.data import ShapesDataModule
from ldm_lightning.testing import reference_pipeline

SETTINGS = {
    "sampling": Sampling(num_inference_steps=4, height=32, width=32),
    "guidance": ClassifierFreeGuidance(3.0),
}


def pipeline_call(batch: dict) -> dict:
    """The arguments that make diffusers' pipeline draw `batch` as our sampler does with SETTINGS."""
    return {
        "prompt": batch["prompt"],
        "negative_prompt": batch["negative_prompt"],
        "generator": [torch.Generator("cpu").manual_seed(s) for s in batch["seed"]],
        "num_inference_steps": 4,
        "guidance_scale": 3.0,
        "height": 32,
        "width": 32,
    }


def random_lora(tiny_model, folder) -> str:
    """A saved LoRA whose up-projections are random (a trained one's stand-in), so that it changes the images."""
    module = LatentDiffusionModule(tiny_model, **SETTINGS)
    add_lora(module.unet, rank=4)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in module.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    return str(save_lora(module.unet, folder))


def test_a_lora_then_whole_unet_fit_exports_a_folder_diffusers_draws_the_same_from(tiny_model, tmp_path):
    lora = random_lora(tiny_model, tmp_path / "lora")
    module = LatentDiffusionModule(tiny_model, lora=LoraFile(lora, 0.7), **SETTINGS)
    set_learning_rate(module, 1e-5, warmup_steps=1)
    batch = batch_of(PROMPTS, NEGATIVES, SEEDS)
    with_lora = module.sample(batch)[0].images
    base = LatentDiffusionModule(tiny_model, **SETTINGS).sample(batch)[0].images
    pipe = reference_pipeline(LatentDiffusionModule(tiny_model, **SETTINGS).components, "ddim")
    pipe.load_lora_weights(str(tmp_path / "lora"), adapter_name="applied")
    pipe.set_adapters(["applied"], adapter_weights=[0.7])  # fused at the scale it is applied with
    reference = pipe(**pipeline_call(batch), output_type="pt").images
    assert (to_uint8(with_lora).int() - to_uint8(reference).int()).abs().max() <= 1
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    callbacks = [checkpoints, EMAWeightAveraging(decay=0.5)]  # the average is taken over the merged U-Net too
    trainer = quiet_trainer(max_steps=2, enable_checkpointing=True, callbacks=callbacks, default_root_dir=tmp_path)
    trainer.fit(module, ShapesDataModule(batch_size=4, num_samples=8, seed=0))
    assert not has_adapters(module.unet)  # merged: the whole U-Net trained, the LoRA is part of its weights
    trained = module.sample(batch)[0].images
    assert 0 < (trained - with_lora).abs().max() < 0.01 < (trained - base).abs().max()  # one small step from it

    exported = module.save_pretrained(tmp_path / "model")
    with safe_open(exported / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        names = list(f.keys())
    assert not [n for n in names if "lora" in n or "base_layer" in n]
    reference = diffusers_images(exported, batch, steps=4, size=32, guidance_scale=3.0)
    assert (to_uint8(trained).int() - to_uint8(reference).int()).abs().max() <= 1  # one 8-bit level at most

    # The checkpoint reloads into a module that applies the same LoRA (fused, as in training).
    reloaded = LatentDiffusionModule.load_from_checkpoint(checkpoints.best_model_path)
    assert (reloaded.sample(batch)[0].images - trained).abs().max() <= 1e-5


def test_saving_a_unet_that_carries_adapters_is_refused(tiny_model, tmp_path):
    module = LatentDiffusionModule(tiny_model, finetune=LoRA(rank=2), **SETTINGS)
    with pytest.raises(UserError, match="save_pretrained: the U-Net carries LoRA adapters"):
        save_pipeline(module.components, tmp_path / "model")
