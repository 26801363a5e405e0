"""Checkpoints that hold only what trains (the U-Net, or its LoRA adapters) and still resume with EMA.

Lightning's `WeightAveraging` callback writes the averaged weights as `state_dict` and the current
ones as `current_model_state`, each a copy of the whole module, frozen VAE and text encoder included,
and on resume loads its averaged model strictly. The frozen parts are the pretrained model's, so they
are left out on save and filled in again from the freshly loaded module on load.
"""

from typing import Any

import torch

# The state tables Lightning (state_dict) and its WeightAveraging callback (current_model_state) write.
STATE_KEYS = ("state_dict", "current_model_state")


def trained_names(module: torch.nn.Module) -> set[str]:
    """Names of the parameters that train (requires_grad), as they appear in the module's state dict."""
    return {name for name, p in module.named_parameters() if p.requires_grad}


def keep_trained(checkpoint: dict[str, Any], names: set[str]) -> None:
    """Drop every frozen tensor from the checkpoint's state tables, in place."""
    for key in STATE_KEYS:
        if key in checkpoint:
            checkpoint[key] = {k: v for k, v in checkpoint[key].items() if k in names}


def fill_frozen(checkpoint: dict[str, Any], module_state: dict[str, torch.Tensor]) -> None:
    """Put the module's own (pretrained, frozen) tensors back where a checkpoint left them out, in place."""
    for key in STATE_KEYS:
        if key in checkpoint:
            checkpoint[key] = {**module_state, **checkpoint[key]}
