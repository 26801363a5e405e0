"""Cross-attention maps: images unchanged, the recorded maps equal softmax(QKᵀ/√d) by hand, words map to tokens."""

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention

from ldm_lightning.generation.guidance import ClassifierFreeGuidance
from ldm_lightning.generation.sampling import generate
from ldm_lightning.generation.schedulers import SCHEDULERS, build_scheduler
from ldm_lightning.inspection.attention import CrossAttentionRecorder, Word, prompt_words, size_at, word_maps
from ldm_lightning.inspection.batch import Inspection

PROMPTS = ["a red circle", "blue ../ square ünïcode", "a green star at the top"]
NEGATIVES = ["", "green", "blurry"]
SEEDS = [3, 7, 1234]


def sample(components, scheduler: str, n: int, guidance: float = 3.0, steps: int = 4) -> torch.Tensor:
    return generate(
        components,
        build_scheduler(scheduler, components.scheduler_config),
        ClassifierFreeGuidance(guidance),
        PROMPTS[:n],
        NEGATIVES[:n],
        SEEDS[:n],
        num_inference_steps=steps,
        eta=0.5,
        height=32,
        width=32,
    ).images


def cross_attention_layers(unet) -> list[Attention]:
    return [m for name, m in unet.named_modules() if name.endswith("attn2")]


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("n", [1, 3])
def test_images_are_unchanged_with_inspection(tiny_module, scheduler, n):
    """Every sampler, batch 1 and 3: attention recorded and the trajectory kept, the images are the same."""
    components = tiny_module.components
    before = dict(components.unet.attn_processors)
    plain = sample(components, scheduler, n)
    inspection = Inspection(views=["attention", "trajectory"], trajectory_every=2)
    sampler = build_scheduler(scheduler, components.scheduler_config)
    with inspection.watch(components, sampler, PROMPTS[:n]) as watch:
        inspected = generate(
            components,
            sampler,
            ClassifierFreeGuidance(3.0),
            PROMPTS[:n],
            NEGATIVES[:n],
            SEEDS[:n],
            num_inference_steps=4,
            eta=0.5,
            height=32,
            width=32,
            on_step=watch.on_step,
        )
    views = watch.views(inspected)
    assert torch.equal(plain, inspected.images)
    assert all(view["attention"]["maps"].shape[-2:] == (32, 32) for view in views)
    after = components.unet.attn_processors
    assert all(after[name] is processor for name, processor in before.items())  # the layers' own, back


def test_images_are_unchanged_without_guidance(tiny_module):
    components = tiny_module.components
    plain = sample(components, "ddim", 3, guidance=1.0)
    with CrossAttentionRecorder(components.unet, num_images=3) as recorder:
        recorded = sample(components, "ddim", 3, guidance=1.0)
    assert torch.equal(plain, recorded)
    assert recorder.maps


def test_only_cross_attention_layers_are_wrapped(tiny_module):
    unet = tiny_module.unet
    with CrossAttentionRecorder(unet, num_images=1):
        wrapped = {n for n, p in unet.attn_processors.items() if type(p).__name__ == "RecordingProcessor"}
    assert wrapped == {n for n in unet.attn_processors if n.endswith("attn2.processor")}
    assert all(".attn1." not in n for n in wrapped)


def test_maps_have_one_map_per_token_at_the_layer_resolution(tiny_module):
    components = tiny_module.components
    steps, n = 4, 3
    with CrossAttentionRecorder(components.unet, num_images=n) as recorder:
        sample(components, "ddim", n, steps=steps)
    layers = cross_attention_layers(components.unet)
    tokens = components.tokenizer.model_max_length
    # The tiny U-Net: 32² pixels -> 16² latents; every cross-attention block sits below one downsampler.
    assert set(recorder.maps) == {2}
    assert recorder.maps[2].shape == (n, tokens, 8, 8)
    assert recorder.counts[2] == len(layers) * layers[0].heads * steps
    # Attention probabilities sum to 1 over the tokens at each position, for each head, layer and step.
    totals = recorder.maps[2].sum(dim=1)
    assert torch.allclose(totals, torch.full_like(totals, recorder.counts[2]), rtol=1e-5)


def test_timestep_range_records_only_those_steps(tiny_module):
    components = tiny_module.components
    scheduler = build_scheduler("ddim", components.scheduler_config)
    scheduler.set_timesteps(4)
    kept = sum(500 <= int(t) <= 1000 for t in scheduler.timesteps)
    assert 0 < kept < 4
    with CrossAttentionRecorder(components.unet, num_images=1, timesteps=(500, 1000)) as recorder:
        sample(components, "ddim", 1)
    layers = cross_attention_layers(components.unet)
    assert recorder.counts[2] == len(layers) * layers[0].heads * kept


def test_maps_do_not_depend_on_batch_size(tiny_module):
    components = tiny_module.components
    with CrossAttentionRecorder(components.unet, num_images=3) as together:
        sample(components, "ddim", 3)
    with CrossAttentionRecorder(components.unet, num_images=1) as alone:
        sample(components, "ddim", 1)
    assert torch.allclose(together.maps[2][0], alone.maps[2][0], atol=1e-4)
    assert not torch.allclose(together.maps[2][0], together.maps[2][1], atol=1e-2)


def test_recorded_map_is_softmax_of_scaled_query_key_products(tiny_module):
    """One U-Net call on a [unconditional; conditional] batch, checked against the projections done by hand."""
    unet = tiny_module.unet
    n, heads_seen = 2, {}
    torch.manual_seed(0)
    latents = torch.randn(2 * n, 4, 16, 16)
    context = torch.randn(2 * n, 7, unet.config.cross_attention_dim)
    inputs = {}

    def keep_input(module, args, kwargs):
        inputs[module] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    layers = cross_attention_layers(unet)
    hooks = [layer.register_forward_pre_hook(keep_input, with_kwargs=True) for layer in layers]
    try:
        with CrossAttentionRecorder(unet, num_images=n) as recorder:
            unet(latents, torch.tensor(400), encoder_hidden_states=context)
    finally:
        for hook in hooks:
            hook.remove()
    expected = torch.zeros(n, 7, 8 * 8, dtype=torch.float64)
    for layer in layers:
        x = inputs[layer][n:].double()  # the conditional rows
        q = x @ layer.to_q.weight.double().T
        k = context[n:].double() @ layer.to_k.weight.double().T
        heads = layer.heads
        d = q.shape[-1] // heads
        heads_seen[layer] = heads
        for h in range(heads):
            qh, kh = q[..., h * d : (h + 1) * d], k[..., h * d : (h + 1) * d]
            expected += torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(d), dim=-1).transpose(1, 2)
    got = recorder.maps[2].double().flatten(2)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4)


def test_size_at_halves_with_ceiling():
    assert size_at((64, 64), 1) == (64, 64)
    assert size_at((64, 96), 8) == (8, 12)
    assert size_at((9, 7), 2) == (5, 4)  # a stride-2 conv with padding 1 gives ceil(n / 2)


def test_prompt_words_merge_sub_word_tokens(tiny_module):
    tokenizer = tiny_module.components.tokenizer  # one token per UTF-8 byte
    words = prompt_words(tokenizer, "blue ../ square ünïcode")
    lengths = [len(w.encode()) for w in ["blue", ".", ".", "/", "square", "ünïcode"]]
    assert [w.text for w in words] == ["blue", ".", ".", "/", "square", "ünïcode"]
    position, expected = 1, []  # position 0 is the start token
    for length in lengths:
        expected.append(tuple(range(position, position + length)))
        position += length
    assert [w.tokens for w in words] == expected
    assert all(0 not in w.tokens and position not in w.tokens for w in words)  # start and end tokens


def test_prompt_words_drop_words_past_the_token_limit(tiny_module):
    tokenizer = tiny_module.components.tokenizer  # 32 tokens: start + 30 bytes + end
    words = prompt_words(tokenizer, "aaaaaaaaaa bbbbbbbbbb cccccccccc dddddddddd")
    assert [w.text for w in words] == ["aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc"]
    assert words[-1].tokens == tuple(range(21, 31))


def test_prompt_words_on_a_word_level_tokenizer():
    from ldm_lightning.generation.components import load_components

    tokenizer = load_components("tiny-shapes").tokenizer
    words = prompt_words(tokenizer, "a big zzz circle, at the top")
    assert [w.text for w in words] == ["a", "big", "zzz", "circle", ",", "at", "the", "top"]
    assert [w.tokens for w in words] == [(i,) for i in range(1, 9)]  # the unknown word keeps its token


def test_word_maps_merge_tokens_upsample_and_normalise():
    grid = torch.zeros(5, 4, 4)
    grid[1, 0, 0] = 1.0  # token 1 attends to the top-left cell
    grid[2, 3, 3] = 3.0  # token 2 to the bottom-right cell
    grid[3, 3, 3] = 1.0  # token 3 too, more weakly
    words = [Word("first", (1,)), Word("second", (2, 3))]
    maps = word_maps({2: grid}, words, (16, 16))
    assert maps.shape == (2, 16, 16)
    assert maps.amin() >= 0 and torch.allclose(maps.flatten(1).amax(dim=1), torch.ones(2))
    assert maps[0, :4, :4].mean() > 0.5 and maps[0, 12:, 12:].max() == 0
    assert maps[1, 12:, 12:].mean() > 0.5 and maps[1, :4, :4].max() == 0
    # Bilinear upsampling of the mean of the word's tokens, by hand at one pixel centre: cell (3, 3)
    # covers pixels 12..15, so pixel 14 (centre 14.5 -> source 3.125) is the cell's own value.
    assert torch.isclose(maps[1, 14, 14], torch.tensor(1.0))


def test_layer_resolutions_on_stable_diffusions_block_layout():
    """SD v1's U-Net layout (3 cross-attention down blocks, a plain one, mid, a plain up block, 3 cross-attention
    ones) with tiny channels: layers at 1, 2, 4 and 8 times below the latent, recorded at those sizes."""
    from diffusers import UNet2DConditionModel

    from ldm_lightning.inspection.attention import cross_attention_factors

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
        sample_size=16,
    )
    factors = cross_attention_factors(unet)
    expected = {"down_blocks.0": 1, "down_blocks.1": 2, "down_blocks.2": 4, "mid_block": 8}
    expected |= {"up_blocks.1": 4, "up_blocks.2": 2, "up_blocks.3": 1}
    for name, factor in factors.items():
        assert factor == expected[name.split(".attentions")[0]], name
    with CrossAttentionRecorder(unet, num_images=1) as recorder:
        unet(torch.randn(2, 4, 16, 16), torch.tensor(10), encoder_hidden_states=torch.randn(2, 5, 16))
    assert {f: tuple(m.shape[-2:]) for f, m in recorder.maps.items()} == {1: (16, 16), 2: (8, 8), 4: (4, 4), 8: (2, 2)}
