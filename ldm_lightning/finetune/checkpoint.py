"""Checkpoints that hold only what trains (the U-Net, or its LoRA adapters) and still resume with EMA.

Lightning's `WeightAveraging` callback writes the averaged weights as `state_dict` and the current
ones as `current_model_state`, each a copy of the whole module, frozen VAE and text encoder included,
and on resume loads its averaged model strictly. The frozen parts are the pretrained model's, so they
are left out on save and filled in again from the freshly loaded module on load. What a checkpoint holds
must then all find its place: a tensor the module has no parameter for is refused, never dropped.
"""

from typing import Any

import torch

from ldm_lightning.errors import UserError

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


def slim_checkpoint(checkpoint: dict[str, Any], module: torch.nn.Module, part_keys: tuple[str, ...]) -> None:
    """What `on_save_checkpoint` keeps, in place: the module's parts as plain configs (`class_path` and
    `init_args`, which `torch.load(weights_only=True)` reads back), and only the tensors that train (with EMA,
    its average too): the frozen parts come from the pretrained model again."""
    from ldm_lightning.generation.provenance import part_spec

    hparams = checkpoint.get("hyper_parameters", {})
    for key in part_keys:
        if hparams.get(key) is not None and not isinstance(hparams[key], dict):
            hparams[key] = part_spec(hparams[key])
    keep_trained(checkpoint, trained_names(module) or {k for k in checkpoint["state_dict"] if k.startswith("unet.")})


def prepare_checkpoint(checkpoint: dict[str, Any], module_state: dict[str, torch.Tensor]) -> None:
    """Make a checkpoint's state tables fit the module whose `module_state` is given before Lightning loads them,
    in place: the frozen tensors left out on save come from the module; a tensor with no place in it is refused."""
    check_every_tensor_fits(checkpoint, module_state)
    fill_frozen(checkpoint, module_state)


def check_every_tensor_fits(checkpoint: dict[str, Any], module_state: dict[str, torch.Tensor]) -> None:
    """Refuse a checkpoint holding tensors the module has no place for (a LoRA checkpoint in a module without
    LoRA, or the reverse): loading it non-strictly would drop them and leave the base model without a word."""
    for key in STATE_KEYS:
        table = checkpoint.get(key, {})
        dropped = sorted(set(table) - set(module_state))
        if dropped:
            raise UserError(
                f"ckpt_path: {len(dropped)} of the checkpoint's tensors have no place in this model and would be "
                f"dropped (e.g. {dropped[0]}); {how_to_load(table)}"
            )


def how_to_load(table: dict[str, torch.Tensor]) -> str:
    """The settings that give a module the checkpoint's tensors, read from the tensors themselves (the checkpoint's
    hyper-parameters may be overridden by whoever loads it)."""
    down = [v for k, v in table.items() if ".lora_A." in k]
    if down:  # peft's down-projection is (rank, in_features) (Hu et al. 2021)
        rank = down[0].shape[0]
        return f"it holds LoRA adapters: pass finetune=LoRA(rank={rank}) (--model.finetune.rank {rank} with LoRA)"
    if any(k.startswith("unet.") for k in table):
        return "it holds a whole U-Net: pass finetune=FullUNet() (the default), not LoRA"
    return "load it with the model and settings it was trained with"
