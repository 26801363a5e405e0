"""Fine-tuning knobs: noise offset, and the rest of what `fit` takes as config keys."""

import torch
from helpers import quiet_trainer, set_learning_rate


def test_noise_offset_adds_its_square_to_the_noise_power():
    from diffusers import DDPMScheduler

    from ldm_lightning.generation.training import diffusion_loss

    class Zero(torch.nn.Module):  # predicts 0, so the loss is the mean square of the target noise
        def forward(self, sample, timestep, encoder_hidden_states, return_dict):
            return (torch.zeros_like(sample),)

    schedule = DDPMScheduler(num_train_timesteps=1000)
    encoder = lambda ids: (torch.zeros(len(ids), 3, 8),)  # noqa: E731
    encoder.dtype = torch.float32
    encoder.device = torch.device("cpu")
    tokenizer = lambda p, **k: type("T", (), {"input_ids": torch.zeros(len(p), 3, dtype=torch.long)})()  # noqa: E731
    tokenizer.model_max_length = 3
    latents = torch.zeros(64, 4, 8, 8)
    torch.manual_seed(0)
    plain = diffusion_loss(Zero(), encoder, tokenizer, schedule, latents, [""] * 64).item()
    offset = diffusion_loss(Zero(), encoder, tokenizer, schedule, latents, [""] * 64, noise_offset=3.0).item()
    # E[(z + 3c)²] = 1 + 9 with z, c standard normal; 256 offsets give a spread of about ±0.8.
    assert 0.95 < plain < 1.05 and 7.5 < offset < 12.5, (plain, offset)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model):
    from diffusers import DDPMScheduler

    from ldm_lightning.finetune.method import FullUNet
    from ldm_lightning.generation.training import diffusion_loss
    from ldm_lightning.module import LatentDiffusionModule

    grads = []
    for checkpointing in (False, True):
        module = LatentDiffusionModule(tiny_model, finetune=FullUNet(gradient_checkpointing=checkpointing))
        module.setup("fit")
        assert module.unet.is_gradient_checkpointing == checkpointing
        torch.manual_seed(0)
        latents = torch.randn(2, 4, 8, 8)
        schedule = DDPMScheduler.from_config(module.components.scheduler_config)
        diffusion_loss(
            module.unet, module.text_encoder, module.components.tokenizer, schedule, latents, ["a", "b"]
        ).backward()
        grads.append(module.unet.conv_in.weight.grad.clone())
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_prediction_type_override_trains_samples_and_exports_it(tiny_model, tmp_path):
    import json

    from ldm_lightning.finetune.method import FullUNet
    from ldm_lightning.generation.schedulers import build_scheduler
    from ldm_lightning.module import LatentDiffusionModule

    module = LatentDiffusionModule(tiny_model, finetune=FullUNet(prediction_type="v_prediction"))
    module.setup("fit")
    assert module.noise_schedule.config.prediction_type == "v_prediction"  # the training target
    sampler = build_scheduler("ddim", module.components.scheduler_config)
    assert sampler.config.prediction_type == "v_prediction"  # and how sampling reads the U-Net's output
    module.save_pretrained(tmp_path / "model")
    written = json.loads((tmp_path / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert written["prediction_type"] == "v_prediction"
    assert (
        LatentDiffusionModule(str(tmp_path / "model")).components.scheduler_config["prediction_type"] == "v_prediction"
    )


def test_constant_schedule_holds_the_rate_after_warm_up(tiny_model, tmp_path):
    from lightning import Callback

    from ldm_lightning.module import LatentDiffusionModule
    from ldm_lightning.shapes.data import ShapesDataModule

    class Rates(Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    rates = Rates()
    module = set_learning_rate(LatentDiffusionModule(tiny_model), 0.4, warmup_steps=2, decay="constant")
    trainer = quiet_trainer(
        max_steps=5,
        default_root_dir=tmp_path,
        callbacks=[rates],
    )
    trainer.fit(module, ShapesDataModule(batch_size=2, num_samples=10))
    assert rates.seen == [0.0, 0.2, 0.4, 0.4, 0.4]  # linear warm-up over 2 steps, then flat
