"""Preference scores on tiny random CLIPs, each against a computation written out here in torch ops.

The references preprocess by hand (32×32 images need no resize: rescale by 1/255, normalise with
OpenAI's CLIP mean and std), and HPS v2's reference runs an OpenCLIP-layout ViT straight from the
OpenCLIP-named state dict, so the key map is checked against the architecture, not against itself.
"""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ldm_lightning.errors import UserError
from ldm_lightning.evaluation import preference
from ldm_lightning.evaluation.openclip_keys import openclip_to_transformers

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)  # OpenAI CLIP (Radford et al. 2021)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
PROMPTS = ["a red circle", "a large blue square at the top", "a small green triangle on the left"]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)


def _pixels(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - MEAN) / STD


def _hf_embeddings(folder: str, images: torch.Tensor, prompts: list[str]):
    """Unit image and text embeddings from the saved CLIP, towers called one by one with hand-made inputs."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(folder).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=_pixels(images)).pooler_output)
        txt = torch.cat(
            [
                model.text_projection(
                    model.text_model(input_ids=torch.tensor([tokenizer(p)["input_ids"]])).pooler_output
                )
                for p in prompts
            ]
        )
    return model, F.normalize(img, dim=-1), F.normalize(txt, dim=-1)


def test_pick_score_is_scaled_cosine(tiny_clip, images):
    scores = preference.pick_score(images, PROMPTS, preference.load_pick_score(tiny_clip))
    model, img, txt = _hf_embeddings(tiny_clip, images, PROMPTS)
    expected = model.logit_scale.exp() * (img * txt).sum(-1)
    torch.testing.assert_close(torch.tensor(scores), expected, atol=1e-4, rtol=1e-5)
    assert math.isclose(float(model.logit_scale.detach().exp()), 1 / 0.07, rel_tol=1e-4)  # transformers' initial scale


def test_aesthetic_is_the_linear_head_on_unit_embeddings(tiny_clip, images, tmp_path):
    torch.manual_seed(2)
    sizes = [(32, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    # The published file's names: Linear layers at Sequential indices 0, 2, 4, 6, 7 (Dropouts between).
    state = {}
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), sizes):
        state[f"layers.{index}.weight"] = torch.randn(fan_out, fan_in) / fan_in**0.5
        state[f"layers.{index}.bias"] = torch.randn(fan_out)
    torch.save(state, tmp_path / "head.pth")
    scores = preference.aesthetic(images, preference.load_aesthetic(str(tmp_path / "head.pth"), tiny_clip))
    _, x, _ = _hf_embeddings(tiny_clip, images, PROMPTS)
    for index in (0, 2, 4, 6, 7):  # no activations: the published predictor is linear
        x = x @ state[f"layers.{index}.weight"].T + state[f"layers.{index}.bias"]
    torch.testing.assert_close(torch.tensor(scores), x.squeeze(-1), atol=1e-4, rtol=1e-5)


# ----- HPS v2: an OpenCLIP-named ViT, scored by hand -----

WIDTH, LAYERS, HEADS, PATCH, SIZE, EMBED = 32, 2, 4, 8, 32, 16


def _openclip_state(vocab: int, context: int) -> dict[str, torch.Tensor]:
    """Random weights under OpenCLIP's `CLIP` names (open_clip/model.py, transformer.py), written from its layout."""
    torch.manual_seed(3)
    r = lambda *shape: torch.randn(*shape) * 0.2  # noqa: E731
    state = {"logit_scale": torch.tensor(math.log(1 / 0.07))}

    def tower(prefix: str) -> None:
        for i in range(LAYERS):
            b = f"{prefix}transformer.resblocks.{i}."
            state.update(
                {
                    b + "ln_1.weight": 1 + r(WIDTH),
                    b + "ln_1.bias": r(WIDTH),
                    b + "attn.in_proj_weight": r(3 * WIDTH, WIDTH),
                    b + "attn.in_proj_bias": r(3 * WIDTH),
                    b + "attn.out_proj.weight": r(WIDTH, WIDTH),
                    b + "attn.out_proj.bias": r(WIDTH),
                    b + "ln_2.weight": 1 + r(WIDTH),
                    b + "ln_2.bias": r(WIDTH),
                    b + "mlp.c_fc.weight": r(4 * WIDTH, WIDTH),
                    b + "mlp.c_fc.bias": r(4 * WIDTH),
                    b + "mlp.c_proj.weight": r(WIDTH, 4 * WIDTH),
                    b + "mlp.c_proj.bias": r(WIDTH),
                }
            )

    tower("visual.")
    tower("")
    grid = SIZE // PATCH
    state.update(
        {
            "visual.conv1.weight": r(WIDTH, 3, PATCH, PATCH),
            "visual.class_embedding": r(WIDTH),
            "visual.positional_embedding": r(grid * grid + 1, WIDTH),
            "visual.ln_pre.weight": 1 + r(WIDTH),
            "visual.ln_pre.bias": r(WIDTH),
            "visual.ln_post.weight": 1 + r(WIDTH),
            "visual.ln_post.bias": r(WIDTH),
            "visual.proj": r(WIDTH, EMBED),
            "token_embedding.weight": r(vocab, WIDTH),
            "positional_embedding": r(context, WIDTH),
            "ln_final.weight": 1 + r(WIDTH),
            "ln_final.bias": r(WIDTH),
            "text_projection": r(WIDTH, EMBED),
            "attn_mask": torch.full((context, context), float("-inf")).triu(1),
        }
    )
    return state


def _ln(sd, name, x):
    return F.layer_norm(x, (x.shape[-1],), sd[name + ".weight"], sd[name + ".bias"])


def _blocks(sd, prefix, x, causal):
    n, t, _ = x.shape
    mask = torch.full((t, t), float("-inf")).triu(1) if causal else torch.zeros(t, t)
    for i in range(LAYERS):
        b = f"{prefix}transformer.resblocks.{i}."
        h = _ln(sd, b + "ln_1", x) @ sd[b + "attn.in_proj_weight"].T + sd[b + "attn.in_proj_bias"]
        q, k, v = (part.view(n, t, HEADS, -1).transpose(1, 2) for part in h.chunk(3, dim=-1))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask, dim=-1) @ v
        attn = attn.transpose(1, 2).reshape(n, t, -1)
        x = x + attn @ sd[b + "attn.out_proj.weight"].T + sd[b + "attn.out_proj.bias"]
        h = F.gelu(_ln(sd, b + "ln_2", x) @ sd[b + "mlp.c_fc.weight"].T + sd[b + "mlp.c_fc.bias"])
        x = x + h @ sd[b + "mlp.c_proj.weight"].T + sd[b + "mlp.c_proj.bias"]
    return x


def _openclip_image(sd, pixels):
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.class_embedding"].expand(len(x), 1, -1), x], dim=1) + sd["visual.positional_embedding"]
    x = _blocks(sd, "visual.", _ln(sd, "visual.ln_pre", x), causal=False)
    return _ln(sd, "visual.ln_post", x[:, 0]) @ sd["visual.proj"]


def _openclip_text(sd, ids):
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    x = _ln(sd, "ln_final", _blocks(sd, "", x, causal=True))
    return x[torch.arange(len(ids)), ids.argmax(-1)] @ sd["text_projection"]  # pooled at end-of-text, the top id


@pytest.fixture(scope="module")
def hps_files(tiny_clip, tmp_path_factory):
    """An OpenCLIP-format checkpoint and a transformers CLIP folder (config, tokenizer, processor) of the same shape."""
    from transformers import CLIPConfig, CLIPProcessor

    folder = tmp_path_factory.mktemp("hps")
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    processor.save_pretrained(folder / "clip")
    base = json.loads((Path(tiny_clip) / "config.json").read_text())
    vocab, context = base["text_config"]["vocab_size"], base["text_config"]["max_position_embeddings"]
    layout = {"hidden_size": WIDTH, "intermediate_size": 4 * WIDTH, "num_attention_heads": HEADS}
    layout.update(num_hidden_layers=LAYERS, hidden_act="quick_gelu")  # the loader must switch to exact GELU
    names = ("vocab_size", "max_position_embeddings", "eos_token_id", "bos_token_id")
    text = {k: base["text_config"][k] for k in names}
    config = CLIPConfig(
        text_config={**layout, **text, "pad_token_id": base["text_config"]["pad_token_id"]},
        vision_config={**layout, "image_size": SIZE, "patch_size": PATCH},
        projection_dim=EMBED,
    )
    config.save_pretrained(folder / "clip")
    state = _openclip_state(vocab, context)
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / "hps.pt")
    return folder / "hps.pt", folder / "clip", state


def test_openclip_key_map_covers_clipmodel(hps_files):
    from transformers import CLIPConfig, CLIPModel

    _, clip, state = hps_files
    expected = {k for k in CLIPModel(CLIPConfig.from_pretrained(clip)).state_dict() if not k.endswith("position_ids")}
    renamed = openclip_to_transformers(state)
    assert set(renamed) == expected
    torch.testing.assert_close(renamed["visual_projection.weight"], state["visual.proj"].T)
    q, k, v = (renamed[f"text_model.encoder.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
    torch.testing.assert_close(torch.cat([q, k, v]), state["transformer.resblocks.1.attn.in_proj_weight"])
    with pytest.raises(KeyError, match="text.unknown"):
        openclip_to_transformers({**state, "text.unknown": torch.zeros(1)})


def test_hpsv2_equals_openclip_forward(hps_files, images):
    from transformers import CLIPTokenizer

    checkpoint, clip, state = hps_files
    scores = preference.hpsv2(images, PROMPTS, preference.load_hpsv2(str(checkpoint), str(clip)))
    tokenizer = CLIPTokenizer.from_pretrained(clip)
    with torch.no_grad():
        img = F.normalize(_openclip_image(state, _pixels(images)), dim=-1)
        ids = [torch.tensor([tokenizer(p)["input_ids"]]) for p in PROMPTS]
        txt = torch.cat([F.normalize(_openclip_text(state, i), dim=-1) for i in ids])
    torch.testing.assert_close(torch.tensor(scores), 100 * (img * txt).sum(-1), atol=1e-4, rtol=1e-5)


def _hps_transform(image: torch.Tensor, max_size: int) -> torch.Tensor:
    """HPSv2's `preprocess_val` (open_clip/transform.py: ToTensor, ResizeMaxSize, Normalize) on one uint8 (3, H, W)
    image, written from its code: torchvision's tensor `resize` is `interpolate(..., antialias=True)` (its default
    since torchvision 0.17), and `F.pad(img, [left, top, right, bottom], fill=0)`."""
    tensor = image.float() / 255  # ToTensor on an RGB PIL image
    height, width = tensor.shape[1:]
    scale = max_size / float(max(height, width))
    if scale != 1.0:
        new_size = tuple(round(dim * scale) for dim in (height, width))
        tensor = F.interpolate(tensor[None], size=new_size, mode="bicubic", align_corners=False, antialias=True)[0]
        pad_h, pad_w = max_size - new_size[0], max_size - new_size[1]
        left, top, right, bottom = pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2
        tensor = F.pad(tensor, (left, right, top, bottom), value=0)
    return (tensor - MEAN[0]) / STD[0]  # OpenCLIP's OPENAI_DATASET_MEAN / _STD


def test_hpsv2_scores_images_through_its_own_transform(hps_files):
    # Non-square images: HPS v2 resizes the longer side to the ViT's 32 and pads the shorter with black;
    # a CLIP processor would resize the shorter side and crop the longer one.
    from transformers import CLIPTokenizer

    checkpoint, clip, state = hps_files
    torch.manual_seed(5)
    images = torch.randint(0, 256, (3, 3, 40, 72), dtype=torch.uint8)
    scores = preference.hpsv2(images, PROMPTS, preference.load_hpsv2(str(checkpoint), str(clip)))
    tokenizer = CLIPTokenizer.from_pretrained(clip)
    with torch.no_grad():
        pixels = torch.stack([_hps_transform(image, SIZE) for image in images])
        assert pixels.shape == (3, 3, SIZE, SIZE) and torch.all(pixels[:, :, 0] == (0 - MEAN[0, :, 0]) / STD[0, :, 0])
        img = F.normalize(_openclip_image(state, pixels), dim=-1)
        ids = [torch.tensor([tokenizer(p)["input_ids"]]) for p in PROMPTS]
        txt = torch.cat([F.normalize(_openclip_text(state, i), dim=-1) for i in ids])
    torch.testing.assert_close(torch.tensor(scores), 100 * (img * txt).sum(-1), atol=1e-4, rtol=1e-5)


def test_hpsv2_version_from_the_published_file_names():
    assert preference.hpsv2_version("/models/HPS_v2_compressed.pt") == "v2.0"
    assert preference.hpsv2_version("HPS_v2.1_compressed.pt") == "v2.1"
    assert preference.hpsv2_version("hps.pt") == "unknown" and preference.hpsv2_version(None) == "unknown"


def test_missing_weights_name_key_file_and_download(tmp_path, tiny_clip):
    with pytest.raises(UserError) as err:
        preference.load_hpsv2(str(tmp_path / "HPS_v2.1_compressed.pt"), tiny_clip)
    message = str(err.value)
    assert message.startswith("model.metrics: HPSv2.checkpoint: ") and "HPS_v2.1_compressed.pt" in message
    assert "hf download xswu/HPSv2" in message and "\n" not in message
    with pytest.raises(UserError, match=r"^model.metrics: Aesthetic.weights: .*no such file.*wget https://github.com"):
        preference.load_aesthetic(str(tmp_path / "missing.pth"), tiny_clip)
    with pytest.raises(UserError, match=r"^model.metrics: PickScore.model: .*no such folder"):
        preference.load_pick_score(str(tmp_path / "no-pickscore"))


def test_scorers_refuse_float_images(tiny_clip, images):
    with pytest.raises(TypeError, match="uint8"):
        preference.pick_score(images.float(), PROMPTS, preference.load_pick_score(tiny_clip))
