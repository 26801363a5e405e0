"""OpenCLIP state-dict names -> transformers `CLIPModel` names, for checkpoints published only for OpenCLIP.

HPS v2 / v2.1 (Wu et al. 2023) ship an OpenCLIP ViT-H-14 state dict. Installing `open_clip_torch`
pulls torchvision, which replaces a pinned CPU torch; transformers' `CLIPModel` has the same
architecture (pre-LN ViT with a class token, causal text transformer pooled at the end-of-text
token, linear projections), so the weights are renamed rather than run in OpenCLIP.

The OpenCLIP names are those of `open_clip.model.CLIP` (the default, non-"custom text" layout):
`visual.*` for the image tower, top-level `token_embedding`, `positional_embedding`,
`transformer.*`, `ln_final`, `text_projection` for the text tower, and `logit_scale`.
"""

import re

import torch

# One residual block, OpenCLIP -> transformers; the fused attention input projection is split apart.
_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
# Tensors outside the residual blocks. Projections are stored as (width, embed) matrices applied as
# `x @ proj` in OpenCLIP, and as `nn.Linear` weights (embed, width) in transformers: transposed.
_PLAIN = {
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # transformers' own spelling
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_BLOCK_KEY = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
# Buffers OpenCLIP may save that carry no weights (the text tower's causal mask).
_IGNORED = {"attn_mask"}


def strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `module.` prefix that DistributedDataParallel training leaves on every key."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k.removeprefix("module."): v for k, v in state_dict.items()}
    return state_dict


def openclip_to_transformers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and split, transpose) an OpenCLIP CLIP state dict into transformers' `CLIPModel` keys.

    Raises KeyError naming the first key it does not know, so a checkpoint of another layout
    (OpenCLIP's "custom text" towers, a CoCa) fails loudly instead of loading half its weights.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in strip_prefix(state_dict).items():
        if key in _IGNORED:
            continue
        if key in _PLAIN:
            out[_PLAIN[key]] = value
            continue
        if key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
            continue
        match = _BLOCK_KEY.match(key)
        if match is None:
            raise KeyError(key)
        tower = "vision_model" if match.group(1) else "text_model"
        prefix, rest = f"{tower}.encoder.layers.{match.group(2)}", match.group(3)
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            # nn.MultiheadAttention stacks the query, key and value projections, in that order.
            kind = rest.rsplit("_", 1)[1]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{prefix}.self_attn.{name}.{kind}"] = part.contiguous()
            continue
        module, _, param = rest.rpartition(".")
        if module not in _BLOCK:
            raise KeyError(key)
        out[f"{prefix}.{_BLOCK[module]}.{param}"] = value
    return out
