"""Train a tiny ``CLIPModel`` contrastively on shapes; its text tower becomes the frozen text encoder.

As in SD v1, where the U-Net reads CLIP ViT-L/14's text tower. Run:
``python -m ldm_lightning.shapes.clip --out DIR --minutes M --seed S [--text-encoder-out DIR] [--world scenes]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextModel, PreTrainedTokenizerFast

from ldm_lightning.evaluation.clip_score import feature_tensor
from ldm_lightning.shapes.data import (
    POSITIONS,
    Shape,
    ShapesDataset,
    caption,
    combos,
    eval_shapes,
    matches,
    render,
    shape_at,
    to_tensor,
)
from ldm_lightning.shapes.loop import steps_for_minutes, train_loop
from ldm_lightning.shapes.scene import CANVAS_PX, scene_at
from ldm_lightning.shapes.scene_caption import SCENE_VOCABULARY, matches_scene
from ldm_lightning.shapes.scene_data import ScenesDataset, World
from ldm_lightning.shapes.tokenizer import build_tokenizer

# OpenAI CLIP's normalisation, so the saved CLIPImageProcessor is the stock one.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_clip(tokenizer: PreTrainedTokenizerFast, image_size: int = 64) -> CLIPModel:
    """≈0.64 M-parameter CLIP: text 64-d × 3 layers, ViT 96-d × 4 layers on 8-px patches of ``image_size``²,
    projection 64.

    bos/eos/pad ids come from the tokenizer so the pooled text output is taken at the first EOS.
    """
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=64,
    )
    vision = dict(
        image_size=image_size,
        patch_size=8,
        hidden_size=96,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        projection_dim=64,
    )
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64))


def normalize(pixel_values: torch.Tensor) -> torch.Tensor:
    """[-1, 1] pixels → CLIP-normalised pixels (what ``CLIPImageProcessor`` yields at 64²)."""
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((pixel_values + 1) / 2 - mean) / std


def position_twin(shape: Shape, rng: np.random.Generator) -> Shape:
    """The same shape (colour, kind, size, jitter) moved to one of the other four positions."""
    others = [p for p in POSITIONS if p != shape.position]
    return replace(shape, position=others[rng.integers(len(others))])


def clip_batches(
    batch_size: int, seed: int, p_full: float = 0.0, p_twins: float = 0.5
) -> Iterator[tuple[list[str], torch.Tensor, list[Shape]]]:
    """Endless (captions, pixels in [-1, 1], attributes) batches of the training split.

    A share ``p_full`` of captions is replaced by the full template (0.5 did not help position).
    A share ``p_twins`` of each batch is position-twin pairs: an item and its ``position_twin``, both
    captioned with their position. In random batches 2% of negatives differ from a true caption in
    position alone, and zero-shot position stayed at 37%; with half of each batch in twins it reaches 82%
    after 461 steps and 100% after 900 (docs/results/tiny-shapes-position.md).
    """
    pairs = int(batch_size * p_twins) // 2
    dataset = ShapesDataset(10**9, "train", seed)
    loader = DataLoader(dataset, batch_size=batch_size - pairs)
    rng = np.random.default_rng([seed, 1])
    for i, batch in enumerate(loader):
        shapes = [shape_at(i * (batch_size - pairs) + j, "train", seed) for j in range(len(batch["prompt"]))]
        prompts = [caption(s, "full") if rng.random() < p_full else p for s, p in zip(shapes, batch["prompt"])]
        twins = [position_twin(s, rng) for s in shapes[:pairs]]
        prompts[:pairs] = [caption(s, rng, with_position=True) for s in shapes[:pairs]]
        prompts += [caption(s, rng, with_position=True) for s in twins]
        pixels = (
            torch.cat([batch["pixel_values"], torch.stack([to_tensor(render(s)) for s in twins])])
            if twins
            else batch["pixel_values"]
        )
        yield prompts, pixels, shapes + twins


def scene_batches(batch_size: int, seed: int) -> Iterator[tuple[list[str], torch.Tensor, list]]:
    """Endless (varied captions, pixels in [-1, 1], scenes) batches of the scene world's training split."""
    loader = DataLoader(ScenesDataset(10**9, "train", seed), batch_size=batch_size)
    for i, batch in enumerate(loader):
        scenes = [scene_at(i * batch_size + j, "train", seed) for j in range(len(batch["prompt"]))]
        yield list(batch["prompt"]), batch["pixel_values"], scenes


def contrastive_loss(
    logits: torch.Tensor, prompts: list[str], shapes: list, fits: Callable[[str, object], bool] = matches
) -> torch.Tensor:
    """Symmetric InfoNCE (Radford et al. 2021) with every caption that fits an image as a positive.

    "a circle" describes every circle in the batch; treating those as negatives (plain CLIP loss)
    would push apart pairs that are in fact correct. ``fits(caption, item)`` decides: ``data.matches``
    for single shapes, ``scene_caption.matches_scene`` for scenes.
    """
    target = torch.tensor([[float(fits(p, s)) for p in prompts] for s in shapes])  # image × text
    image_loss = -(target / target.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    text_loss = -(target / target.sum(0, keepdim=True) * F.log_softmax(logits, 0)).sum(0).mean()
    return (image_loss + text_loss) / 2


def train_clip(
    model: CLIPModel,
    tokenizer: PreTrainedTokenizerFast,
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    warmup: int = 50,
    log_every: int = 50,
    p_full: float = 0.0,
    p_twins: float = 0.5,
    world: World = "shapes",
) -> list[float]:
    """AdamW, linear warm-up then cosine decay to 1% of ``lr`` on ``world``'s pairs; returns every step's loss."""
    torch.manual_seed(seed)

    def step_loss(batch) -> tuple[torch.Tensor, dict[str, float]]:
        prompts, pixels, shapes = batch
        tokens = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt")
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=normalize(pixels))
        loss = contrastive_loss(out.logits_per_image, prompts, shapes, matches if world == "shapes" else matches_scene)
        return loss, {"loss": loss.item(), "scale": model.logit_scale.exp().item()}

    batches = clip_batches(batch_size, seed, p_full, p_twins) if world == "shapes" else scene_batches(batch_size, seed)
    return train_loop(model, batches, step_loss, steps, lr, weight_decay=0.05, warmup=warmup, log_every=log_every)


@torch.no_grad()
def zero_shot(model: CLIPModel, tokenizer: PreTrainedTokenizerFast, shapes: list[Shape]) -> dict[str, float]:
    """Top-1 accuracy choosing among all 350 full captions (and per attribute of the choice), and
    among all 35 short captions ("a red circle")."""
    result: dict[str, float] = {}
    images = normalize(torch.stack([to_tensor(render(s)) for s in shapes]))
    image_emb = F.normalize(feature_tensor(model.get_image_features(pixel_values=images)), dim=-1)
    for style in ("full", "short"):
        candidates = (
            combos("all")
            if style == "full"
            else [s for s in combos("all") if s.size == "small" and s.position == "center"]
        )
        tokens = tokenizer(
            [caption(c, style) for c in candidates], padding="max_length", truncation=True, return_tensors="pt"
        )
        text_emb = F.normalize(feature_tensor(model.get_text_features(**tokens)), dim=-1)
        chosen = [candidates[i] for i in (image_emb @ text_emb.T).argmax(1).tolist()]
        attributes = ("colour", "shape", "size", "position") if style == "full" else ("colour", "shape")
        hits = np.array([[getattr(c, a) == getattr(s, a) for a in attributes] for c, s in zip(chosen, shapes)])
        result[f"{style}_caption"] = float(hits.all(1).mean())
        if style == "full":
            result.update({a: float(hits[:, k].mean()) for k, a in enumerate(attributes)})
    return result


def image_processor(size: int = 64) -> CLIPImageProcessor:
    """Stock CLIP preprocessing at ``size``²: resize shortest edge, centre crop, rescale, normalise."""
    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


def save_clip(model: CLIPModel, tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    """Save model (safetensors, fp32), tokenizer and image processor side by side in ``folder``."""
    model.save_pretrained(folder, safe_serialization=True)
    # Calls with padding= / truncation= leave that state in the backend, which tokenizer.json would keep.
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.backend_tokenizer.no_truncation()
    tokenizer.save_pretrained(folder)
    image_processor(model.config.vision_config.image_size).save_pretrained(folder)


def export_text_encoder(model: CLIPModel, folder: Path | None = None) -> CLIPTextModel:
    """The text tower as a ``CLIPTextModel`` with identical weights (saved to ``folder`` if given)."""
    text_encoder = CLIPTextModel(model.config.text_config)
    # transformers 5: CLIPModel.text_model *is* a CLIPTextModel (flat keys, no inner .text_model).
    text_encoder.load_state_dict(model.text_model.state_dict())
    text_encoder.eval()
    if folder is not None:
        text_encoder.save_pretrained(folder, safe_serialization=True)
    return text_encoder


def main() -> None:
    """CLI: train for ``--minutes``, report zero-shot accuracy, save CLIP and its text encoder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for CLIPModel + tokenizer + processor")
    parser.add_argument("--text-encoder-out", type=Path, default=None, help="folder for the CLIPTextModel")
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget; sets --steps if absent")
    parser.add_argument("--steps", type=int, default=None, help="exact number of steps (overrides minutes)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and data")
    parser.add_argument("--batch-size", type=int, default=128, help="caption–image pairs per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--p-full", type=float, default=0.0, help="share of full-template captions")
    parser.add_argument("--p-twins", type=float, default=0.5, help="share of each batch in position-twin pairs")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--world", choices=("shapes", "scenes"), default="shapes", help="training pairs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scenes = args.world == "scenes"
    tokenizer = build_tokenizer(vocabulary=SCENE_VOCABULARY) if scenes else build_tokenizer()
    size = CANVAS_PX if scenes else 64
    if (steps := args.steps) is None:
        steps = steps_for_minutes(
            args.minutes,
            lambda: build_clip(tokenizer, size),
            lambda probe, n: train_clip(
                probe, tokenizer, n, args.batch_size, args.lr, args.seed, log_every=0, world=args.world
            ),
        )
    torch.manual_seed(args.seed)
    model = build_clip(tokenizer, size)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {steps} steps", flush=True)
    start = time.time()
    train_clip(
        model, tokenizer, steps, args.batch_size, args.lr, args.seed, p_full=args.p_full, p_twins=args.p_twins,
        world=args.world,
    )  # fmt: skip
    print(f"trained in {time.time() - start:.0f} s", flush=True)
    save_clip(model, tokenizer, args.out)
    if args.text_encoder_out is not None:
        export_text_encoder(model, args.text_encoder_out)
    if scenes:  # the zero-shot table below is the single-shape world's, drawn at 64²
        return
    for split in ("train", "held_out"):
        accuracy = zero_shot(model, tokenizer, eval_shapes(split))
        print(split, {k: round(v, 4) for k, v in accuracy.items()}, flush=True)


if __name__ == "__main__":
    main()
