"""Long steps outside Lightning's loops show a bar that counts what they do, only where Lightning's own bar would."""

import torch
from lightning import Trainer

import ldm_lightning.shapes.latents as latents
from ldm_lightning.console import shows_progress


def test_encoding_bar_counts_every_image_once(monkeypatch):
    from diffusers import AutoencoderKL

    from ldm_lightning.generation.components import resolve

    bars = []

    class Recorded(latents.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)
            self.shown = not self.disable  # `close` disables every bar

    monkeypatch.setattr(latents, "tqdm", Recorded)
    vae = AutoencoderKL.from_pretrained(resolve("tiny-shapes"), subfolder="vae").eval()
    torch.manual_seed(0)
    mean, _, _ = latents.encode_shapes(vae, num_images=5, seed=0, batch_size=2, progress=True)
    # 5 images in batches of 2, 2 and 1: the bar's count is images, not batches, and ends at the total.
    assert len(mean) == 5
    assert [(bar.total, bar.n, bar.shown) for bar in bars] == [(5, 5, True)]


def test_bars_follow_the_trainers_progress_setting():
    on = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False)
    off = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
    assert shows_progress(on) and not shows_progress(off)
    assert shows_progress(None)  # set up by hand: a notebook user still sees it
