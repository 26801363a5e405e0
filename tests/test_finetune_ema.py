"""EMA with Lightning's own callback: the exported model holds the averaged weights, whatever the callback order."""

import torch
from helpers import quiet_trainer, set_learning_rate
from lightning import Callback
from lightning.pytorch.callbacks import EMAWeightAveraging

from ldm_lightning.generation.export import ExportDiffusers
from ldm_lightning.module import LatentDiffusionModule
from ldm_lightning.shapes.data import ShapesDataModule


class Weights(Callback):
    """The U-Net's conv_in weight after every optimizer step."""

    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(pl_module.unet.conv_in.weight.detach().clone())


def test_export_writes_the_exponential_moving_average(tiny_model, tmp_path):
    decay = 0.6
    weights = Weights()
    trainer = quiet_trainer(
        max_steps=4,
        default_root_dir=tmp_path,
        # The exporter first: it must still see the averaged weights.
        callbacks=[ExportDiffusers(), weights, EMAWeightAveraging(decay=decay)],
    )
    torch.manual_seed(0)
    trainer.fit(set_learning_rate(LatentDiffusionModule(tiny_model), 1e-2, warmup_steps=1), ShapesDataModule(4, 16))
    average = weights.seen[0]  # torch's AveragedModel copies at its first update, then w ← d·w + (1 − d)·x
    for current in weights.seen[1:]:
        average = decay * average + (1 - decay) * current
    exported = LatentDiffusionModule(str(tmp_path / "model")).unet.conv_in.weight
    assert torch.allclose(exported, average, atol=1e-6)
    assert not torch.allclose(exported, weights.seen[-1], atol=1e-4)  # not the last step's weights
