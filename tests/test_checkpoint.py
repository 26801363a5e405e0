"""Checkpoints hold only what trains, and every tensor they hold must find its place: a LoRA checkpoint loaded into a
module without LoRA (or the reverse) is refused in one line naming the settings it was trained with."""

from pathlib import Path

import pytest
from helpers import quiet_trainer, set_learning_rate
from lightning.pytorch.callbacks import ModelCheckpoint

from ldm_lightning.data import PromptDataModule
from ldm_lightning.errors import UserError
from ldm_lightning.evaluation.metrics import ClipScore
from ldm_lightning.finetune.method import FullUNet, LoRA
from ldm_lightning.generation.sampler import Sampling
from ldm_lightning.module import LatentDiffusionModule
from ldm_lightning.shapes.data import ShapesDataModule

SETTINGS = {"sampling": Sampling(num_inference_steps=2, height=32, width=32)}


@pytest.fixture
def lora_checkpoint(tiny_model, tmp_path) -> Path:
    module = set_learning_rate(
        LatentDiffusionModule(tiny_model, finetune=LoRA(rank=2), **SETTINGS), 1e-3, warmup_steps=1
    )
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    trainer = quiet_trainer(max_steps=1, enable_checkpointing=True, callbacks=[checkpoints], default_root_dir=tmp_path)
    trainer.fit(module, ShapesDataModule(batch_size=2, num_samples=2, seed=0))
    return Path(checkpoints.best_model_path)


def test_a_lora_checkpoint_in_a_module_without_lora_is_refused_in_one_line(lora_checkpoint, tiny_model, tiny_clip):
    refusal = (
        r"ckpt_path: \d+ of the checkpoint.s tensors have no place .*lora_A"
        r".*pass finetune=LoRA\(rank=2\) \(--model\.finetune\.rank 2 with LoRA\)$"
    )
    with pytest.raises(UserError, match=refusal) as raised:
        LatentDiffusionModule.load_from_checkpoint(lora_checkpoint, finetune=FullUNet())
    assert "\n" not in str(raised.value)

    module = LatentDiffusionModule(tiny_model, metrics=[ClipScore(tiny_clip)], **SETTINGS)
    with pytest.raises(UserError, match=refusal):
        quiet_trainer().test(module, PromptDataModule(["a red circle"], batch_size=1), ckpt_path=lora_checkpoint)


def test_a_whole_unet_checkpoint_in_a_lora_module_is_refused(tiny_model, tiny_module):
    checkpoint = {"state_dict": tiny_module.state_dict(), "hyper_parameters": dict(tiny_module.hparams)}
    module = LatentDiffusionModule(tiny_model, finetune=LoRA(rank=2), **SETTINGS)
    with pytest.raises(
        UserError,
        match=r"have no place .*to_k\.weight.*whole U-Net: pass finetune=FullUNet\(\) \(the default\), not LoRA$",
    ):
        module.on_load_checkpoint(checkpoint)
