"""`fit` as a fine-tune: an image folder, LoRA adapters only, EMA, validation scored as `test` scores."""

import pytest
import torch
from helpers import metrics_arg, optimizer_args, run_cli, set_learning_rate
from lightning import Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from test_finetune_images import halves, write_folder
from test_sampling import NEGATIVES, PROMPTS, SEEDS, batch_of

from ldm_lightning.evaluation.clip_score import load_clip, score_images
from ldm_lightning.evaluation.metrics import ClipScore
from ldm_lightning.finetune.images import ImageCaptionDataModule
from ldm_lightning.finetune.lora import LoraFile
from ldm_lightning.finetune.method import LoRA
from ldm_lightning.generation.sampler import Sampling
from ldm_lightning.generation.sampling import to_uint8
from ldm_lightning.module import LatentDiffusionModule


def image_folder(tmp_path, n: int = 4):
    names = [f"{i}.png" for i in range(n)]
    return write_folder(tmp_path / "images", {n: halves(24, 40) for n in names}, dict.fromkeys(names, "a red square"))


def quiet_trainer(tmp_path, **kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


def test_one_command_fine_tunes_a_lora_from_a_folder_with_validation_in_tensorboard(tiny_model, tiny_clip, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = [
        "fit",
        f"--model.pretrained_model_name_or_path={tiny_model}",
        f"--model.metrics={metrics_arg(clip=tiny_clip)}",
        "--model.finetune=LoRA",
        "--model.finetune.rank=4",
        "--model.sampling.num_inference_steps=2",
        "--model.sampling.height=32",
        "--model.sampling.width=32",
        *optimizer_args(0.01, 1),
        "--data=ldm_lightning.finetune.images.ImageCaptionDataModule",
        f"--data.path={image_folder(tmp_path)}",
        "--data.batch_size=2",
        "--data.val_prompts=[a red square, a blue circle, a green star]",
        "--trainer.max_steps=4",
        "--trainer.val_check_interval=2",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--output_dir={tmp_path / 'run'}",
    ]
    assert run_cli(args)[0] == 0
    events = EventAccumulator(str(next((tmp_path / "run").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert [e.step for e in events.Scalars("val/clip_score")] == [1, 3]  # after steps 2 and 4
    assert len(events.Images("val/images")) == 2
    state = torch.load(next((tmp_path / "run").rglob("*.ckpt")), map_location="cpu", weights_only=False)["state_dict"]
    assert state and all("lora_" in k for k in state)  # the adapters, nothing frozen

    # The exported LoRA draws, in a fresh module, what the trained adapters drew; and it changed the model.
    lora = next((tmp_path / "run").rglob("pytorch_lora_weights.safetensors"))
    settings = {"sampling": Sampling(num_inference_steps=2, height=32, width=32)}
    base = LatentDiffusionModule(tiny_model, **settings)
    tuned = LatentDiffusionModule(tiny_model, lora=LoraFile(str(lora)), **settings)
    from_checkpoint = LatentDiffusionModule.load_from_checkpoint(next((tmp_path / "run").rglob("*.ckpt")))
    batch = batch_of(PROMPTS, NEGATIVES, SEEDS)
    images = tuned.sample(batch)[0].images
    assert (images - from_checkpoint.sample(batch)[0].images).abs().max() <= 1e-5
    assert (images - base.sample(batch)[0].images).abs().max() > 1e-3
    assert torch.equal(tuned.unet.conv_in.weight, base.unet.conv_in.weight)  # the base stayed frozen


def test_validation_score_is_test_clipscore_of_the_same_prompts_and_seeds(tiny_model, tiny_clip, tmp_path):
    settings = {"sampling": Sampling(num_inference_steps=2, height=32, width=32), "metrics": [ClipScore(tiny_clip)]}
    module = LatentDiffusionModule(tiny_model, **settings)
    data = ImageCaptionDataModule(str(image_folder(tmp_path)), val_prompts=PROMPTS, val_seed=5, val_batch_size=2)
    logged = quiet_trainer(tmp_path).validate(module, data)[0]["val/clip_score"]
    # Independently: the same prompts with seeds 5, 6, 7, sampled and scored one by one.
    clip = load_clip(tiny_clip)
    scores = []
    for i, prompt in enumerate(PROMPTS):
        pixels = to_uint8(module.sample(batch_of([prompt], [""], [5 + i]))[0].images)
        scores += score_images(pixels, [prompt], clip)
    assert abs(logged - sum(scores) / len(scores)) < 1e-4, (logged, scores)


def test_ema_with_lora_checkpoints_only_adapters_and_resumes(tiny_model, tmp_path):
    def fit(steps: int, ckpt_path=None) -> LatentDiffusionModule:
        module = LatentDiffusionModule(tiny_model, sampling=Sampling(height=32, width=32), finetune=LoRA(rank=2))
        set_learning_rate(module, 1e-2, warmup_steps=1)
        checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        trainer = quiet_trainer(
            tmp_path, max_steps=steps, limit_val_batches=0, callbacks=[EMAWeightAveraging(decay=0.5), checkpoints]
        )
        data = ImageCaptionDataModule(str(image_folder(tmp_path)), batch_size=2)
        trainer.fit(module, data, ckpt_path=ckpt_path)
        assert trainer.global_step == steps
        return module

    fit(2)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    for key in ("state_dict", "current_model_state"):
        assert saved[key] and all("lora_" in k for k in saved[key]), key
    assert saved["state_dict"].keys() == saved["current_model_state"].keys()
    resumed = fit(4, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    frozen = [p for n, p in resumed.unet.named_parameters() if "lora_" not in n]
    assert not any(p.requires_grad for p in frozen)


@pytest.mark.ddp
def test_validation_with_two_processes_equals_one(tiny_model, tiny_clip, tmp_path, capsys):
    import re

    from helpers import run_cli, run_cli_subprocess

    def validate(*extra: str) -> float:
        args = [
            "validate",
            f"--model.pretrained_model_name_or_path={tiny_model}",
            f"--model.metrics={metrics_arg(clip=tiny_clip)}",
            "--model.sampling.num_inference_steps=2",
            "--model.sampling.height=32",
            "--model.sampling.width=32",
            "--data=ldm_lightning.finetune.images.ImageCaptionDataModule",
            f"--data.path={image_folder(tmp_path)}",
            "--data.val_prompts=[a red square, a blue circle, a green star]",  # 2 + 1 on two processes
            "--data.val_batch_size=1",
            "--trainer.enable_progress_bar=false",
            f"--output_dir={tmp_path / str(len(extra))}",
            *extra,
        ]
        if extra:  # two processes: DDP starts the second one from the command line
            done = run_cli_subprocess(args, timeout=240)
            assert done.returncode == 0, done.stderr[-2000:]
            printed = done.stdout
        else:
            capsys.readouterr()
            assert run_cli(args)[0] == 0
            printed = capsys.readouterr().out
        return float(re.search(r"val/clip_score\s*│\s*(-?[\d.e-]+)", printed)[1])

    assert abs(validate() - validate("--config=configs/devices/ddp-cpu-2.yaml")) < 1e-5
