"""Memory a fine-tune of SD v1.4 needs at 512², computed (not measured) from parameter and activation sizes.

    python -m ldm_lightning.lab.finetune_memory [--lora_rank 4] [--batch_size 1]

Parameters come from SD v1.4's architecture built on the meta device (no weights, no memory). The
activations are the tensors autograd keeps for the backward pass of one U-Net forward at 64×64
latents, counted by a saved-tensors hook on the meta device, where PyTorch runs its math attention
(which keeps each attention matrix; the fused flash / memory-efficient kernels used on GPUs keep far
less, so this is an upper bound there). Memory for the CUDA context, the allocator's fragmentation,
the VAE's encoding of each batch and the data loader come on top.
"""

import argparse

import torch

from ldm_lightning.finetune.lora import DEFAULT_TARGET_MODULES
from ldm_lightning.lab.architectures import SD14_TEXT_ENCODER, build_sd14

GIB = 2**30


def lora_parameters(unet: torch.nn.Module, rank: int, targets: list[str] = DEFAULT_TARGET_MODULES) -> int:
    """Parameters of rank-`rank` adapters on the target layers: rank × (in + out) per layer (Hu et al. 2021)."""
    layers = [m for n, m in unet.named_modules() if n.endswith(tuple(targets)) and isinstance(m, torch.nn.Linear)]
    return sum(rank * (m.in_features + m.out_features) for m in layers)


def saved_bytes(unet: torch.nn.Module, batch: int, dtype: torch.dtype, checkpointing: bool) -> tuple[int, int]:
    """Bytes of the tensors autograd saves in one training forward of the U-Net (meta device, math
    attention), in all and in the largest of its top-level blocks."""
    unet = unet.to(dtype).train().requires_grad_(True)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    parameters = {id(p) for p in unet.parameters()}
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    saved: dict[int, tuple[int, int]] = {}  # tensor id -> (bytes, index of the block that saved it; -1: none)
    kept = []  # holding them keeps their ids unique
    current = [-1]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in parameters:
            saved[id(tensor)] = (tensor.numel() * tensor.element_size(), current[0])
            kept.append(tensor)
        return tensor

    def enter(i: int):
        return lambda *_: current.__setitem__(0, i)

    hooks = [b.register_forward_pre_hook(enter(i)) for i, b in enumerate(blocks)]
    hooks += [b.register_forward_hook(lambda *_: current.__setitem__(0, -1)) for b in blocks]
    side = unet.config.sample_size
    latents = torch.zeros(batch, unet.config.in_channels, side, side, device="meta", dtype=dtype)
    text = torch.zeros(batch, SD14_TEXT_ENCODER["max_position_embeddings"], 768, device="meta", dtype=dtype)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        unet(latents, torch.tensor([500], device="meta"), encoder_hidden_states=text)
    for hook in hooks:
        hook.remove()
    if checkpointing:
        unet.disable_gradient_checkpointing()
    per_block = [sum(size for size, block in saved.values() if block == i) for i in range(len(blocks))]
    return sum(size for size, _ in saved.values()), max(per_block)


def activation_gib(unet: torch.nn.Module, batch: int) -> tuple[float, float]:
    """Activations held at the peak of a bf16-mixed step (bf16 compute), without and with gradient checkpointing.

    With checkpointing, the forward keeps only what the checkpoints save; the backward then recomputes
    one checkpointed piece at a time, which holds at most one top-level block's activations (diffusers
    checkpoints each resnet and transformer, smaller pieces still): the bound adds the largest block.
    """
    everything, largest_block = saved_bytes(unet, batch, torch.bfloat16, checkpointing=False)
    kept, _ = saved_bytes(unet, batch, torch.bfloat16, checkpointing=True)
    return everything / GIB, (kept + largest_block) / GIB


def plan(lora_rank: int, batch: int) -> list[tuple[str, float, float, float, float]]:
    """Rows (recipe, weights, gradients + AdamW, EMA copy, activations) in GiB, for bf16-mixed training."""
    from diffusers.utils import logging

    logging.set_verbosity_error()  # casting the meta U-Net to bf16 warns each time
    parts = build_sd14("meta")
    unet = parts["unet"]
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}
    weights = 4 * sum(counts.values()) / GIB  # fp32 master weights of every component
    lora = lora_parameters(unet, lora_rank)
    full, checkpointed = activation_gib(unet, batch)
    rows = []
    for name, trained, average in (
        # Lightning's EMAWeightAveraging averages a copy of the whole module, frozen parts included.
        (f"LoRA rank {lora_rank} ({lora:,} parameters)", lora, 0.0),
        (f"full U-Net ({counts['unet']:,} parameters) with EMA", counts["unet"], weights),
    ):
        held = weights + (4 * lora / GIB if trained == lora else 0.0)  # adapters are weights of their own
        optimizer = (4 + 8) * trained / GIB  # an fp32 gradient and AdamW's two moments per trained parameter
        rows.append((name, held, optimizer, average, full))
        rows.append((name + ", gradient checkpointing", held, optimizer, average, checkpointed))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora_rank", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=1)
    args = parser.parse_args()
    print(f"SD v1.4 at 512², batch {args.batch_size}, bf16-mixed (fp32 weights), AdamW; GiB, computed\n")
    print("| recipe | weights | gradients + AdamW | EMA copy | activations (≤) | total (≤) |")
    print("|---|---|---|---|---|---|")
    for name, weights, optimizer, average, activations in plan(args.lora_rank, args.batch_size):
        total = weights + optimizer + average + activations
        print(f"| {name} | {weights:.2f} | {optimizer:.2f} | {average:.2f} | {activations:.2f} | {total:.1f} |")


if __name__ == "__main__":
    main()
