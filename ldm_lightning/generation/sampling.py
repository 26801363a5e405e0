"""Text-to-image sampling in latent space: prompts -> text embeddings -> noise -> denoised latents -> pixels.

Each stage is a function with tensors in and tensors out. `generate` strings them together in the
order of diffusers' `StableDiffusionPipeline.__call__`, so that the same components, scheduler and
seeds give the same images (the parity tests hold us to 1e-5).
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from ldm_lightning.generation.components import Components, vae_scale_factor
from ldm_lightning.generation.guidance import Guidance


@dataclass
class Samples:
    """What one sampling call returns, row by row."""

    images: torch.Tensor  # (B, 3, H, W) float32 in [0, 1]
    finite: torch.Tensor  # (B,) bool: the final latents hold no NaN/inf
    truncated: torch.Tensor  # (B,) bool: the prompt was longer than the tokenizer's limit
    num_tokens: torch.Tensor  # (B,) int: prompt length in tokens, start/end tokens included


def tokenize(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids padded to the tokenizer's limit, plus each prompt's full length and a truncation flag.

    Truncation keeps the end-of-text token last (the tokenizer adds special tokens after
    truncating), which CLIP's pooled output and SD's conditioning expect.
    """
    limit = tokenizer.model_max_length
    ids = tokenizer(prompts, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
    lengths = torch.tensor([len(x) for x in tokenizer(prompts, truncation=False, verbose=False).input_ids])
    return ids.input_ids, lengths, lengths > limit


def unknown_words(tokenizer, prompts: list[str]) -> dict[str, list[str]]:
    """Per prompt, the words the tokenizer maps to its unknown token (a word-level vocabulary such as the embedded
    model's; CLIP's byte-level BPE knows every word and gives none)."""
    unk = tokenizer.unk_token_id
    if unk is None or unk in (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id):
        return {}
    found = {}
    for prompt in dict.fromkeys(prompts):
        enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        words = [prompt[a:b] for i, (a, b) in zip(enc.input_ids, enc.offset_mapping) if i == unk]
        if words:
            found[prompt] = words
    return found


def report_unknown_words(tokenizer, prompts: list[str]) -> None:
    """Say once which words of which prompts the model's tokenizer does not know (they become its unknown token)."""
    from lightning.pytorch.utilities import rank_zero_info

    found = unknown_words(tokenizer, prompts)
    if found:
        words = ", ".join(repr(w) for w in dict.fromkeys(w for ws in found.values() for w in ws))
        example = next(iter(found))
        rank_zero_info(
            f"note: the model's tokenizer does not know {words} ({len(found)} of {len(set(prompts))} prompts, "
            f"e.g. {example!r}); it reads them as {tokenizer.unk_token}"
        )


def encode_text(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token text embeddings (the last hidden state) that the U-Net cross-attends to."""
    embeds = text_encoder(input_ids.to(text_encoder.device))[0]
    # Keep the text encoder's dtype even under autocast, as the reference pipeline does.
    return embeds.to(dtype=text_encoder.dtype)


def initial_noise(
    seeds: list[int], shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Gaussian latents, one CPU generator per row, drawn exactly as diffusers' `randn_tensor` does.

    Row i is what `StableDiffusionPipeline` draws for one image given
    `torch.Generator("cpu").manual_seed(seeds[i])`, whatever the batch and the device. The
    generators are returned so that stochastic schedulers keep drawing from each row's own stream.
    """
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    noise = randn_tensor((len(seeds), *shape), generator=generators, device=device, dtype=dtype)
    return noise, generators


def step_kwargs(scheduler: SchedulerMixin, eta: float, generators: list[torch.Generator]) -> dict:
    """The optional arguments this scheduler's `step` accepts (eta: DDIM only; generator: the stochastic ones)."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generators
    return kwargs


def predict_noise(unet, latents, t, cond, uncond) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The U-Net's conditional and (when `uncond` is given) unconditional noise estimates, as one batched call."""
    if uncond is None:
        # A copy: multistep schedulers keep past estimates, and a CUDA-graph U-Net (fast mode)
        # overwrites its output buffer at the next step.
        return unet(latents, t, encoder_hidden_states=cond, return_dict=False)[0].clone(), None
    both = unet(torch.cat([latents] * 2), t, encoder_hidden_states=torch.cat([uncond, cond]), return_dict=False)[0]
    eps_uncond, eps_cond = both.chunk(2)
    return eps_cond, eps_uncond


class _Decoder(torch.nn.Module):
    """`vae.decode` as a forward, so that `functional_call` can run it with other parameters."""

    def __init__(self, vae: torch.nn.Module) -> None:
        """Args:
        vae: the VAE whose `decode` this module's forward calls.
        """
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents, return_dict=False)[0]


def decode_in_fp32(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """`vae.decode` computed in fp32 on fp32 copies of the weights, leaving the VAE's own weights as they are.

    Casting the module instead (`vae.float()`) would keep it fp32 for the rest of the run, at twice
    the memory of an fp16 VAE. The copies live only for this call.
    """
    decoder = _Decoder(vae)
    weights = {
        name: t.float() if t.is_floating_point() else t for name, t in decoder.state_dict(keep_vars=True).items()
    }
    with torch.autocast(latents.device.type, enabled=False):
        return torch.func.functional_call(decoder, weights, (latents.float(),))


def decode(vae, latents: torch.Tensor, force_fp32: bool = False) -> torch.Tensor:
    """Latents -> images in [0, 1]. The scaling factor is the VAE's own (0.18215 for SD v1).

    `force_fp32` decodes in fp32 whatever the VAE's dtype, without casting the VAE.
    """
    latents = latents / vae.config.scaling_factor
    if force_fp32:
        # SD v1's VAE overflows in fp16 and decodes black images (diffusers#2153).
        images = decode_in_fp32(vae, latents)
    else:
        images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> uint8 in 0..255, rounded as diffusers' `numpy_to_pil` does."""
    return (images * 255).round().to(torch.uint8)


@torch.no_grad()
def generate(
    components: Components,
    scheduler: SchedulerMixin,
    guidance: Guidance,
    prompts: list[str],
    negative_prompts: list[str],
    seeds: list[int],
    *,
    num_inference_steps: int,
    eta: float,
    height: int,
    width: int,
    decode_fp32: bool = False,
    progress: bool = False,
    on_step: Callable[..., None] | None = None,
) -> Samples:
    """Sample one image per prompt. `scheduler` must be a fresh instance (its state is consumed); `guidance`
    combines the conditional and unconditional estimates of each step (`guidance.py`).

    `progress` shows a bar over the denoising steps (worth it when one batch takes minutes).
    `on_step`, when given, is called after each step with keyword arguments `index`, `timestep`,
    `model_input` (the scaled latents the U-Net saw), `noise` (the guided estimate) and `output` (the
    scheduler's step output); it observes and must not modify them.
    """
    device = components.unet.device

    # 1. Encode the prompts (and, when guidance first needs them, the negative prompts) with the frozen text encoder.
    ids, num_tokens, truncated = tokenize(components.tokenizer, prompts)
    cond = encode_text(components.text_encoder, ids)
    uncond = None

    # 2. Timesteps of this sampler for the requested number of steps.
    scheduler.set_timesteps(num_inference_steps, device=device)

    # 3. Initial noise in latent space: 4 × H/8 × W/8 for SD v1, one seeded stream per row.
    factor = vae_scale_factor(components.vae)
    shape = (components.unet.config.in_channels, height // factor, width // factor)
    latents, generators = initial_noise(seeds, shape, device, cond.dtype)
    latents = latents * scheduler.init_noise_sigma
    extra = step_kwargs(scheduler, eta, generators)

    # 4. Denoising loop: predict the noise, guide, step from x_t to x_{t-1}.
    guidance.reset()
    steps = len(scheduler.timesteps)
    for i, t in enumerate(tqdm(scheduler.timesteps, desc="denoising", leave=False, disable=not progress)):
        model_input = scheduler.scale_model_input(latents, t)  # elementwise: same as on the CFG batch
        wants_uncond = guidance.needs_unconditional(i, steps)
        if wants_uncond and uncond is None:
            uncond = encode_text(components.text_encoder, tokenize(components.tokenizer, negative_prompts)[0])
        eps_cond, eps_uncond = predict_noise(components.unet, model_input, t, cond, uncond if wants_uncond else None)
        noise = guidance.combine(eps_cond, eps_uncond, i, steps, t)
        output = scheduler.step(noise, t, latents, **extra, return_dict=True)
        latents = output.prev_sample
        if on_step is not None:
            on_step(index=i, timestep=t, model_input=model_input, noise=noise, output=output)

    # 5. Decode the latents to pixels with the VAE.
    finite = torch.isfinite(latents).flatten(1).all(dim=1).cpu()
    images = decode(components.vae, latents, force_fp32=decode_fp32)
    return Samples(images=images, finite=finite, truncated=truncated, num_tokens=num_tokens)
