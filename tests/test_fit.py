"""`fit`: the LDM objective trains the U-Net (loss goes down), checkpoints reload, the export is a usable model."""

import torch
from helpers import cli_args, optimizer_args, quiet_trainer, run_cli, set_learning_rate
from lightning import Callback

from ldm_lightning.module import LatentDiffusionModule
from ldm_lightning.shapes.data import ShapesDataModule


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


def test_loss_goes_down_and_only_the_unet_trains(tiny_model):
    module = set_learning_rate(LatentDiffusionModule(tiny_model), 4e-3, warmup_steps=5)
    frozen = {k: v.clone() for k, v in module.vae.state_dict().items()}
    losses = Losses()
    trainer = quiet_trainer(max_steps=20, callbacks=[losses])
    torch.manual_seed(0)
    trainer.fit(module, ShapesDataModule(batch_size=4, num_samples=80, seed=0))
    first, last = sum(losses.values[:8]) / 8, sum(losses.values[-8:]) / 8
    assert last < 0.8 * first, (first, last)
    assert all(torch.equal(v, module.vae.state_dict()[k]) for k, v in frozen.items())


def test_fit_cli_saves_a_checkpoint_and_a_diffusers_folder(tiny_model, tmp_path):
    args = cli_args(
        "fit",
        *optimizer_args(1e-3, 2),
        "--data=ldm_lightning.shapes.data.ShapesDataModule",
        "--data.batch_size=4",
        "--data.num_samples=16",
        "--trainer.max_steps=4",
        model=tiny_model,
        size=None,
        out=tmp_path,
    )
    assert run_cli(args)[0] == 0
    ckpts = list(tmp_path.rglob("*.ckpt"))
    assert len(ckpts) == 1
    state = torch.load(ckpts[0], map_location="cpu", weights_only=False)["state_dict"]
    assert state and all(k.startswith("unet.") for k in state)  # frozen parts are not duplicated
    reloaded = LatentDiffusionModule.load_from_checkpoint(ckpts[0])
    assert torch.equal(reloaded.unet.conv_in.weight, state["unet.conv_in.weight"])
    exported = next(tmp_path.rglob("model"))
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= {p.name for p in exported.iterdir()}
    from_export = LatentDiffusionModule(str(exported))
    assert torch.equal(from_export.unet.conv_in.weight, state["unet.conv_in.weight"])


def test_the_readme_fit_command_fine_tunes_the_embedded_model(tmp_path):
    args = cli_args(
        "fit",
        "--config=configs/fit/tiny-shapes-finetune.yaml",
        "--trainer.max_steps=2",  # the config as written, shortened
        "--data.init_args.num_images=16",
        "--data.init_args.batch_size=4",
        f"--output_dir={tmp_path}",  # after the config, which names its own
        size=None,
    )
    assert run_cli(args)[0] == 0
    exported = next(tmp_path.rglob("model"))
    tuned, shipped = LatentDiffusionModule(str(exported)), LatentDiffusionModule()
    assert not torch.equal(tuned.unet.conv_in.weight, shipped.unet.conv_in.weight)  # it trained
    assert torch.equal(tuned.vae.decoder.conv_out.weight, shipped.vae.decoder.conv_out.weight)  # frozen
