"""Tokenizer round trip and a few training steps of the CLIP and VAE recipes."""

import numpy as np
import torch
from diffusers import AutoencoderKL
from transformers import AutoTokenizer, CLIPModel, CLIPTextModel

from ldm_lightning.shapes.clip import build_clip, clip_batches, export_text_encoder, save_clip, train_clip
from ldm_lightning.shapes.data import matches, parse_caption
from ldm_lightning.shapes.judge import judge
from ldm_lightning.shapes.tokenizer import BOS, EOS, build_tokenizer
from ldm_lightning.shapes.vae import build_vae, latent_scaling_factor, train_vae

PROMPTS = ["a large red circle at the top", "On the left, a big blue star", "", "a purple dog"]


def test_tokenizer_round_trip(tmp_path) -> None:
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    direct = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    nested = AutoTokenizer.from_pretrained(tmp_path, subfolder="tokenizer")
    kwargs = dict(padding="max_length", truncation=True, return_tensors="pt")
    ids = tokenizer(PROMPTS, **kwargs).input_ids
    assert torch.equal(ids, direct(PROMPTS, **kwargs).input_ids)
    assert torch.equal(ids, nested(PROMPTS, **kwargs).input_ids)
    assert ids.shape == (4, tokenizer.model_max_length) == (4, direct.model_max_length)
    assert direct.convert_ids_to_tokens(ids[1].tolist())[:10] == [
        BOS,
        "on",
        "the",
        "left",
        ",",
        "a",
        "big",
        "blue",
        "star",
        EOS,
    ]
    assert (ids[2, 1:] == direct.eos_token_id).all() and direct.pad_token_id == direct.eos_token_id
    assert direct.unk_token_id in ids[3].tolist()  # "dog" is not in the vocabulary
    long = direct(["a " * 40], **kwargs).input_ids[0]
    assert long[0] == direct.bos_token_id and long[-1] == direct.eos_token_id  # truncation keeps EOS


def test_clip_batches_hold_position_twins() -> None:
    prompts, pixels, shapes = next(clip_batches(batch_size=16, seed=0, p_twins=0.5))
    assert len(prompts) == len(pixels) == len(shapes) == 16
    for i in range(4):  # items 0-3 and their twins 12-15: the same shape elsewhere, each captioned with its place
        a, b = shapes[i], shapes[12 + i]
        assert a.position != b.position and (a.shape, a.colour, a.size, a.dx, a.dy) == (
            b.shape,
            b.colour,
            b.size,
            b.dx,
            b.dy,
        )
        for k in (i, 12 + i):
            assert parse_caption(prompts[k])["position"] == shapes[k].position
        assert not matches(prompts[i], b) and not matches(prompts[12 + i], a)
    # the pixels show the attributes: the drawn position is the listed one
    for k in range(16):
        image = ((pixels[k].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        assert judge(image).position == shapes[k].position


def test_clip_trains_saves_and_exports(tmp_path) -> None:
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = build_clip(tokenizer)
    losses = train_clip(model, tokenizer, steps=12, batch_size=32, lr=3e-3, warmup=2, log_every=0)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    save_clip(model, tokenizer, tmp_path / "clip")
    text_encoder = export_text_encoder(model, tmp_path / "text_encoder")
    reloaded = CLIPModel.from_pretrained(tmp_path / "clip")
    tokens = tokenizer(PROMPTS, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.get_text_features(**tokens).pooler_output
        torch.testing.assert_close(reloaded.get_text_features(**tokens).pooler_output, expected)
        hidden = model.text_model(input_ids=tokens.input_ids).last_hidden_state
        for encoder in (text_encoder, CLIPTextModel.from_pretrained(tmp_path / "text_encoder")):
            torch.testing.assert_close(encoder(input_ids=tokens.input_ids).last_hidden_state, hidden)
            assert encoder.dtype == torch.float32
    # pooled output sits at the first EOS, i.e. after the real tokens, not at a padding EOS
    assert text_encoder.config.eos_token_id == tokenizer.eos_token_id != 2


def test_vae_trains_and_stores_its_scaling_factor(tmp_path) -> None:
    torch.manual_seed(0)
    vae = build_vae()
    losses = train_vae(vae, steps=10, batch_size=4, lr=2e-3, warmup=2, log_every=0)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, num_images=16))
    vae.save_pretrained(tmp_path / "vae")
    reloaded = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert reloaded.config.scaling_factor == vae.config.scaling_factor > 0
    latents = reloaded.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()
    assert latents.shape == (1, 4, 16, 16)


def test_zero_shot_reads_embeddings_from_transformers_4_and_5() -> None:
    from ldm_lightning.shapes.clip import zero_shot
    from ldm_lightning.shapes.data import eval_shapes

    class TensorFeatures(CLIPModel):
        """transformers 4.x: the feature methods return the projected embeddings as tensors."""

        def get_image_features(self, **kwargs):
            return super().get_image_features(**kwargs).pooler_output

        def get_text_features(self, **kwargs):
            return super().get_text_features(**kwargs).pooler_output

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = build_clip(tokenizer).eval()
    old = TensorFeatures(model.config).eval()
    old.load_state_dict(model.state_dict())
    shapes = eval_shapes("all")[:6]
    assert zero_shot(old, tokenizer, shapes) == zero_shot(model, tokenizer, shapes)
