"""Per-word cross-attention maps: where in the image each prompt word is attended to while it is drawn.

The method is DAAM's ("What the DAAM", Tang et al., ACL 2023): the U-Net's cross-attention
probabilities softmax(QKᵀ/√d) between image positions and text tokens, summed over heads, layers
and timesteps, upsampled to the image and normalised per word. Here it is done through diffusers'
attention-processor interface and only on the cross-attention layers (`attn2` of each transformer
block): a `RecordingProcessor` wraps the layer's own processor, so the layer's output is the one
that processor computes (SDPA by default) and images do not change; the probabilities are computed
a second time, explicitly, for the conditional half of the classifier-free-guidance batch only.

Memory is bounded: each image keeps one (tokens, h, w) sum per layer resolution, whatever the number
of steps and layers (SD v1 at 512²: 77 × (64² + 32² + 16² + 8²) floats, 1.7 MB per image).

Defaults are DAAM's choice: every cross-attention layer, every head, every timestep. Narrower
choices are `factors` (which layer resolutions are recorded; 1 = the latent's own size, 2 = half, …)
and `timesteps` (the range of diffusion timesteps, 0–1000 for SD, in which steps are recorded).
"""

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# DAAM's threshold on a word's normalised map for its segmentation (Tang et al. 2023, §3: τ = 0.4).
DAAM_THRESHOLD = 0.4


def cross_attention_factors(unet) -> dict[str, int]:
    """Each cross-attention layer of a `UNet2DConditionModel` -> its downsampling factor relative to the latent.

    Keys are the names `unet.attn_processors` uses (``…attn2.processor``). A down block works at the
    resolution left by the downsamplers of the blocks before it; the mid block at the lowest; an up
    block at the lowest divided by the upsamplers of the up blocks before it.
    """
    downs = [bool(getattr(b, "downsamplers", None)) for b in unet.down_blocks]
    ups = [bool(getattr(b, "upsamplers", None)) for b in unet.up_blocks]
    down = [2 ** sum(downs[:i]) for i in range(len(downs))]
    lowest = 2 ** sum(downs)
    up = [lowest // 2 ** sum(ups[:i]) for i in range(len(ups))]
    factors = {}
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        block, index = name.split(".")[0], name.split(".")[1]
        if block == "down_blocks":
            factors[name] = down[int(index)]
        elif block == "up_blocks":
            factors[name] = up[int(index)]
        else:  # mid_block
            factors[name] = lowest
    return factors


def size_at(latent_size: tuple[int, int], factor: int) -> tuple[int, int]:
    """(h, w) of a U-Net level: each stride-2 downsampler (kernel 3, padding 1) maps n to ceil(n / 2)."""
    h, w = latent_size
    while factor > 1:
        h, w, factor = (h + 1) // 2, (w + 1) // 2, factor // 2
    return h, w


def cross_attention_probs(attn, hidden_states, context, attention_mask=None, rows: int | None = None) -> torch.Tensor:
    """softmax(QKᵀ/√d) of a diffusers `Attention` layer for the last `rows` rows, in float32: (rows, heads, N, T).

    The projections are the layer's own; the product and softmax are diffusers' explicit
    `get_attention_scores` (the path SDPA replaces), on float32 copies of the queries and keys.
    """
    total = hidden_states.shape[0]
    rows = total if rows is None else rows
    hidden_states, context = hidden_states[-rows:], context[-rows:]
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query, key = attn.to_q(hidden_states), attn.to_k(context)
    heads, head_dim = attn.heads, key.shape[-1] // attn.heads
    query = query.view(rows, -1, heads, head_dim).transpose(1, 2)
    key = key.view(rows, -1, heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    mask = None
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, key.shape[2], total)[-rows * heads :].float()
    probs = attn.get_attention_scores(query.flatten(0, 1).float(), key.flatten(0, 1).float(), mask)
    return probs.float().view(rows, heads, probs.shape[1], probs.shape[2])


class RecordingProcessor:
    """A cross-attention processor: the wrapped processor's output; the conditional rows' probabilities recorded."""

    def __init__(self, inner, recorder: "CrossAttentionRecorder", factor: int):
        """
        Args:
            inner: the layer's own processor (SDPA by default), which computes the output.
            recorder: where the probabilities are summed.
            factor: the layer's downsampling factor relative to the latent.
        """
        self.inner, self.recorder, self.factor = inner, recorder, factor

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if self.recorder.recording and encoder_hidden_states is not None:
            with torch.no_grad():
                # The conditional half is the batch's last rows: [uncond; cond] under guidance, all rows without.
                probs = cross_attention_probs(
                    attn, hidden_states, encoder_hidden_states, attention_mask, self.recorder.num_images
                )
            self.recorder.add(self.factor, probs)
        return out


class CrossAttentionRecorder:
    """Installs `RecordingProcessor`s on a U-Net's cross-attention layers and sums their maps per image.

    Use it around one sampling call of `num_images` images::

        with CrossAttentionRecorder(unet, num_images=len(prompts)) as recorder:
            samples = generate(...)
        recorder.maps  # {factor: (num_images, tokens, h, w)}, summed over heads, layers and steps

    Leaving the block puts the layers' own processors back.
    """

    def __init__(
        self,
        unet,
        num_images: int,
        factors: list[int] | None = None,
        timesteps: tuple[float, float] | None = None,
    ):
        """
        Args:
            unet: a diffusers `UNet2DConditionModel`.
            num_images: images in the sampling call (the conditional rows of each U-Net batch).
            factors: layer resolutions to record, as downsampling factors relative to the latent (1 =
                the latent's own size, 2 = half, …); None records every cross-attention layer (DAAM).
            timesteps: (lowest, highest) diffusion timestep, inclusive, of the steps to record; None
                records every step (DAAM).
        """
        self.unet, self.num_images = unet, num_images
        self.timesteps = timesteps
        layer_factors = cross_attention_factors(unet)
        self.layers = {n: f for n, f in layer_factors.items() if factors is None or f in factors}
        if not self.layers:
            available = sorted(set(layer_factors.values()))
            raise ValueError(f"factors {factors}: no cross-attention layer at these resolutions; available {available}")
        self.maps: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}  # head maps summed into each resolution's map
        self.recording = False
        self.latent_size: tuple[int, int] | None = None
        self._saved: dict | None = None
        self._hook = None

    def __enter__(self) -> "CrossAttentionRecorder":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def install(self) -> None:
        """Wrap the inspected layers' processors and watch the U-Net's calls for their timestep."""
        self._saved = dict(self.unet.attn_processors)
        processors = dict(self._saved)
        for name, factor in self.layers.items():
            processors[name] = RecordingProcessor(self._saved[name], self, factor)
        self.unet.set_attn_processor(processors)
        self._hook = self.unet.register_forward_pre_hook(self._on_unet_call, with_kwargs=True)

    def remove(self) -> None:
        """Put the layers' own processors back."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._saved is not None:
            self.unet.set_attn_processor(dict(self._saved))
            self._saved = None
        self.recording = False

    def _on_unet_call(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        self.latent_size = tuple(sample.shape[-2:])
        t = float(t.flatten()[0]) if torch.is_tensor(t) else float(t)
        self.recording = self.timesteps is None or self.timesteps[0] <= t <= self.timesteps[1]

    def add(self, factor: int, probs: torch.Tensor) -> None:
        """Sum one layer's (images, heads, h·w, tokens) probabilities into its resolution's map."""
        h, w = size_at(self.latent_size, factor)
        images, heads, positions, tokens = probs.shape
        if positions != h * w:
            raise ValueError(f"a layer of factor {factor} has {positions} positions, expected {h}×{w}")
        summed = probs.sum(dim=1).transpose(1, 2).reshape(images, tokens, h, w)
        if factor in self.maps:
            self.maps[factor] += summed
        else:
            self.maps[factor] = summed.clone()
        self.counts[factor] = self.counts.get(factor, 0) + heads


# ----- from token maps to word maps -----


@dataclass(frozen=True)
class Word:
    """A word of the prompt and the positions of its tokens in the padded token sequence."""

    text: str
    tokens: tuple[int, ...]


def prompt_words(tokenizer, prompt: str) -> list[Word]:
    """The prompt's words with their sub-word tokens merged; start, end and padding tokens belong to none.

    A word is a run of letters and digits or a single punctuation mark. A token belongs to the word
    its first character lies in (the tokenizer's character offsets); special tokens span no
    characters. Words cut off by the tokenizer's length limit have no tokens and are left out.
    """
    encoded = tokenizer(
        prompt, truncation=True, max_length=tokenizer.model_max_length, return_offsets_mapping=True, verbose=False
    )
    spans = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\w+|[^\w\s]", prompt)]
    tokens_of: dict[int, list[int]] = {}
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        if end <= start:
            continue
        for i, (word_start, word_end, _) in enumerate(spans):
            if word_start <= start < word_end:
                tokens_of.setdefault(i, []).append(position)
                break
    return [Word(text, tuple(tokens_of[i])) for i, (_, _, text) in enumerate(spans) if i in tokens_of]


def word_maps(
    token_maps: dict[int, torch.Tensor],
    words: list[Word],
    size: tuple[int, int],
    factors: list[int] | None = None,
) -> torch.Tensor:
    """One image's per-word heat maps, (words, H, W) in [0, 1].

    Args:
        token_maps: {factor: (tokens, h, w)} summed probabilities of one image (a recorder's maps, one row).
        words: the prompt's words (`prompt_words`).
        size: the image's (H, W).
        factors: the resolutions to combine; None combines all recorded ones.

    Each resolution's map is upsampled bilinearly to the image and summed (DAAM sums over layers
    after upsampling); a word's map is the mean of its tokens' maps, then scaled to [0, 1] by its
    own minimum and maximum.
    """
    chosen = sorted(token_maps) if factors is None else factors
    out = torch.zeros(len(words), *size)
    for factor in chosen:
        grid = token_maps[factor].float().cpu()
        merged = torch.stack([grid[list(word.tokens)].mean(dim=0) for word in words]) if words else grid[:0]
        out += F.interpolate(merged[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    low = out.flatten(1).amin(dim=1)[:, None, None]
    high = out.flatten(1).amax(dim=1)[:, None, None]
    return (out - low) / (high - low).clamp_min(1e-12)
