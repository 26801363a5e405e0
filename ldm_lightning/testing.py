"""What tests and benchmarks build: tiny random SD-v1-shaped models and CLIPs, stand-ins for the metrics'
networks (Inception, DINOv2, HPS v2 checkpoint, aesthetic head, Mask2Former), and the reference pipeline.

The tiny models (diffusers fast-test sized) draw noise, not pictures: they exist so that loading,
sampling, parity and multi-process behaviour can be tested in seconds with no download. The
reference is diffusers' own `StableDiffusionPipeline` on the same components.
"""

import hashlib
import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
)

from ldm_lightning.generation.export import write_model_index
from ldm_lightning.generation.schedulers import sd14_scheduler


def _byte_vocab() -> dict[str, int]:
    # CLIP's byte-to-unicode table (Radford et al. 2021, GPT-2 BPE): every byte has a printable
    # symbol, so any text tokenizes with no merges at all.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    tokens = [symbols[b] for b in range(256)]
    tokens += [t + "</w>" for t in tokens] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def save_byte_tokenizer(folder: Path, max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer over single bytes (no merges), saved to and reloaded from `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(_byte_vocab(), ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=max_length)
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_tiny_random(folder: str | Path, seed: int = 0, max_length: int = 32) -> Path:
    """Save seeded tiny random SD v1 components as a diffusers folder and return its path."""
    folder = Path(folder)
    tokenizer = save_byte_tokenizer(folder / "tokenizer", max_length)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        sample_size=16,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=len(tokenizer),
            max_position_embeddings=max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            layer_norm_eps=1e-5,
        )
    )
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    sd14_scheduler().save_pretrained(folder / "scheduler")
    write_model_index(folder)
    return folder


def save_as_hub_cache(folder: str | Path, cache: str | Path, repo_id: str, leave_out: tuple[str, ...] = ()) -> str:
    """Lay a model folder out in a Hugging Face hub cache as `hf download repo_id` leaves it: each file a blob
    named by its hash under `models--org--name/blobs/`, linked from `snapshots/<commit>/`, and `refs/main`
    naming the commit. `leave_out` lists files (relative paths) the repository does not have. Returns the commit.
    """
    folder, repo = Path(folder), Path(cache) / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in folder.rglob("*") if p.is_file() and str(p.relative_to(folder)) not in leave_out)
    commit = hashlib.sha1("".join(str(p.relative_to(folder)) for p in files).encode()).hexdigest()
    for file in files:
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


def build_tiny_clip(folder: str | Path, seed: int = 0, max_length: int = 32) -> Path:
    """Save a seeded tiny random CLIP (model, tokenizer, image processor) as a transformers folder."""
    folder = Path(folder)
    tokenizer = save_byte_tokenizer(folder, max_length)
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": max_length,
            **special,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


class _TinyInception(torch.nn.Module):
    """Stands in for the FID Inception TorchScript: same call, uint8 (B, 3, H, W) in, resized inside, features out."""

    def __init__(self, num_features: int = 16):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, num_features, kernel_size=5, stride=3)
        self.fc = torch.nn.Linear(num_features, 10)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(img.to(torch.float32), size=(29, 29), mode="bilinear", align_corners=False)
        features = torch.relu(self.conv((x - 128) / 128)).mean(dim=(2, 3))
        return features if return_features else self.fc(features)


def build_tiny_inception(path: str | Path, seed: int = 0) -> Path:
    """Save a seeded tiny network with the FID Inception's TorchScript call: `net(images, return_features=True)`."""
    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(_TinyInception().eval()), str(path))
    return path


def build_tiny_dinov2(folder: str | Path, seed: int = 0) -> Path:
    """Save a seeded tiny random DINOv2 (model and image processor) as a transformers folder."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = Path(folder)
    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=28, patch_size=7
    )
    Dinov2Model(config).save_pretrained(folder)
    processor = BitImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 28, "width": 28},
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )
    processor.save_pretrained(folder)
    return folder


def reference_pipeline(components, scheduler: str):
    """diffusers' own StableDiffusionPipeline on the same components and a fresh scheduler: the reference."""
    from diffusers import StableDiffusionPipeline

    from ldm_lightning.generation.schedulers import build_scheduler

    pipe = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=build_scheduler(scheduler, components.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


if __name__ == "__main__":
    import sys

    print(build_tiny_random(sys.argv[1] if len(sys.argv) > 1 else "tiny-random"))


# ----- stand-ins for the per-image scorers' weights (PickScore needs none: any CLIPModel folder is one) -----


def build_tiny_aesthetic(path: str | Path, embed_dim: int, seed: int = 0) -> Path:
    """Save a seeded random head in the LAION aesthetic predictor's layout: Linear layers at Sequential indices
    0, 2, 4, 6, 7 (Dropouts between), sizes embed_dim -> 1024 -> 128 -> 64 -> 16 -> 1."""
    torch.manual_seed(seed)
    sizes = [(embed_dim, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    state = {}
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), sizes):
        state[f"layers.{index}.weight"] = torch.randn(fan_out, fan_in) / fan_in**0.5
        state[f"layers.{index}.bias"] = torch.randn(fan_out)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def openclip_named(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers `CLIPModel` state dict under OpenCLIP's names: the inverse of `openclip_to_transformers`
    (query, key and value projections fused into `attn.in_proj_*`, projections transposed)."""
    import re

    from ldm_lightning.evaluation import openclip_keys

    plain = {v: k for k, v in openclip_keys._PLAIN.items()}
    transposed = {v: k for k, v in openclip_keys._TRANSPOSED.items()}
    block = {v: k for k, v in openclip_keys._BLOCK.items()}
    layer = re.compile(r"^(vision|text)_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
    out = {}
    for key, value in state.items():
        if key in plain:
            out[plain[key]] = value
        elif key in transposed:
            out[transposed[key]] = value.t().contiguous()
        elif match := layer.match(key):
            tower, index, module, kind = match.groups()
            prefix = f"{'visual.' if tower == 'vision' else ''}transformer.resblocks.{index}."
            if module in ("self_attn.k_proj", "self_attn.v_proj"):
                continue  # fused with the query projection below
            if module == "self_attn.q_proj":
                parts = [state[key.replace("q_proj", name)] for name in ("q_proj", "k_proj", "v_proj")]
                out[f"{prefix}attn.in_proj_{kind}"] = torch.cat(parts)
            else:
                out[f"{prefix}{block[module]}.{kind}"] = value
        elif not key.endswith("position_ids"):
            raise KeyError(key)
    return out


def build_tiny_hps(path: str | Path, clip: str | Path) -> Path:
    """Save `clip`'s CLIPModel weights as an HPS v2-style OpenCLIP checkpoint (`{"state_dict": {"module.…"}}`);
    `clip` itself then serves as `model.hpsv2_clip` (config and processor)."""
    state = openclip_named(CLIPModel.from_pretrained(clip).state_dict())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return path


def build_tiny_mask2former(folder: str | Path, seed: int = 0) -> Path:
    """Save a seeded tiny random Mask2Former (Swin backbone, 80 COCO labels, 10 queries) and its processor at 64²."""
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    folder = Path(folder)
    backbone = SwinConfig(
        image_size=64, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = Mask2FormerConfig(
        backbone_config=backbone, num_labels=80, num_queries=10, hidden_dim=32, mask_feature_size=32,
        feature_size=32, encoder_layers=1, decoder_layers=2, dim_feedforward=64, encoder_feedforward_dim=64,
        num_attention_heads=2, use_pretrained_backbone=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(folder)
    return folder
