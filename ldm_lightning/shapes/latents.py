"""The shapes training data as VAE latents, encoded once, so `fit` runs the U-Net alone each step.

Each image is drawn and encoded once; every time it is served it gets a fresh caption and a fresh
sample of its VAE posterior, both seeded by the item index, so an epoch is still reproducible.
"""

import numpy as np
import torch
from diffusers import AutoencoderKL
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ldm_lightning.console import shows_progress
from ldm_lightning.generation.components import resolve
from ldm_lightning.shapes.data import caption, render, shape_at, to_tensor
from ldm_lightning.shapes.scene import Scene, render_scene, scene_at
from ldm_lightning.shapes.scene_caption import varied
from ldm_lightning.shapes.scene_data import World


@torch.no_grad()
def encode_shapes(
    vae: AutoencoderKL,
    num_images: int,
    seed: int,
    batch_size: int = 256,
    progress: bool = False,
    world: World = "shapes",
):
    """Posterior mean and std of `num_images` training images of `world`, and their attributes
    (`data.Shape`s, or `scene.Scene`s for the scene world).

    `progress` shows a bar counting the images encoded (a minute or more before `fit`'s first step
    for thousands of images on a CPU), gone once they are.
    """
    if world == "scenes":
        shapes = [scene_at(i, "train", seed) for i in range(num_images)]
        draw = lambda scene: render_scene(scene.objects)  # noqa: E731
    else:
        shapes, draw = [shape_at(i, "train", seed) for i in range(num_images)], render
    means, stds = [], []
    with tqdm(total=num_images, desc="encoding images", unit="img", leave=False, disable=not progress) as bar:
        for start in range(0, num_images, batch_size):
            pixels = torch.stack([to_tensor(draw(s)) for s in shapes[start : start + batch_size]])
            posterior = vae.encode(pixels).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
            bar.update(len(pixels))
    return torch.cat(means), torch.cat(stds), shapes


def scene_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A varied training caption of a scene (`data.caption` is the single-shape world's)."""
    return varied(scene.claim, rng)


class _LatentItems(Dataset):
    def __init__(self, mean, std, shapes, caption_of, scaling_factor: float, num_samples: int, seed: int, p_empty):
        self.mean, self.std, self.shapes, self.caption_of = mean, std, shapes, caption_of
        self.scale, self.num_samples, self.seed, self.p_empty = scaling_factor, num_samples, seed, p_empty

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        i = index % len(self.shapes)
        rng = np.random.default_rng([self.seed, 7, index])
        prompt = "" if rng.random() < self.p_empty else self.caption_of(self.shapes[i], rng)
        noise = torch.randn(self.mean[i].shape, generator=torch.Generator().manual_seed(int(rng.integers(2**62))))
        return {"prompt": prompt, "latents": (self.mean[i] + self.std[i] * noise) * self.scale}


class ShapesLatentDataModule(LightningDataModule):
    """Cached-latent training batches `{"prompt", "latents"}` of drawn shapes or scenes (seen colour–shape pairs)."""

    def __init__(
        self,
        vae_from: str,
        batch_size: int = 64,
        num_images: int = 8192,
        num_samples: int = 1_000_000,
        seed: int = 0,
        p_empty_caption: float = 0.1,
        world: World = "shapes",
    ):
        """
        Args:
            vae_from: model (folder, hub id or embedded name) whose `vae/` encodes the images;
                the model being trained.
            batch_size: latents per batch.
            num_images: distinct images drawn and encoded once.
            num_samples: items per epoch (images repeat with new captions and posterior samples).
            seed: data seed.
            p_empty_caption: share of empty prompts, so the U-Net also learns the unconditional
                estimate that classifier-free guidance needs (Ho & Salimans 2022: 10–20%).
            world: "shapes" (one shape per 64² image) or "scenes" (one to four shapes, `scene.CANVAS_PX`²).
        """
        if world not in ("shapes", "scenes"):
            raise ValueError(f"data.world must be 'shapes' or 'scenes', got {world!r}")
        super().__init__()
        self.save_hyperparameters()
        self.items: _LatentItems | None = None

    def setup(self, stage: str) -> None:
        if self.items is not None:
            return
        hp = self.hparams
        vae = AutoencoderKL.from_pretrained(resolve(hp.vae_from), subfolder="vae").eval()
        progress = shows_progress(self.trainer)
        mean, std, shapes = encode_shapes(vae, hp.num_images, hp.seed, progress=progress, world=hp.world)
        scale = float(vae.config.scaling_factor)
        caption_of = scene_caption if hp.world == "scenes" else caption
        self.items = _LatentItems(mean, std, shapes, caption_of, scale, hp.num_samples, hp.seed, hp.p_empty_caption)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(
            self.items, batch_size=self.hparams.batch_size, shuffle=True, generator=generator, drop_last=True
        )
