"""What changes an image, read from the parts themselves: the one source of a run's settings and fingerprint.

Every field of every part that samples (the weights loaded, `Sampling`, the guidance method, inspection,
the fine-tuning target) goes in, except `NOT_IN_FINGERPRINT`: settings that provably leave every pixel as
it is. A run folder's fingerprint hashes these settings with the prompt rows (`run_folder/files.py`), so
a run with any other setting — or retrained weights at the same path — starts a new folder, and one
with only these changed resumes the old one.
"""

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

# Bumped when the settings' layout changes: a folder of another format is never resumed.
FORMAT = 2
# Fields of the parts that cannot change an image. (Data settings such as batch_size and num_workers,
# the metrics, progress bars, loggers and output_dir are not part of these settings at all.)
NOT_IN_FINGERPRINT = frozenset({"step_progress"})


def part_config(part: Any, every: bool = False) -> dict[str, Any]:
    """A part's own settings: a dataclass's fields, a diffusers `ConfigMixin`'s config, else its public attributes;
    without `NOT_IN_FINGERPRINT` unless `every`."""
    from diffusers.configuration_utils import ConfigMixin

    if dataclasses.is_dataclass(part):
        config = {f.name: getattr(part, f.name) for f in dataclasses.fields(part)}
    elif isinstance(part, ConfigMixin):
        config = dict(part.config)
    else:
        config = vars(part)
    return {k: v for k, v in config.items() if not k.startswith("_") and (every or k not in NOT_IN_FINGERPRINT)}


def part_spec(part: Any) -> dict[str, Any]:
    """A part as the config that builds it again: `class_path` and `init_args` (plain values, which a checkpoint
    can hold and `torch.load(weights_only=True)` reads back)."""
    cls = type(part)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": jsonable(part_config(part, every=True))}


def build_part(value: Any) -> Any:
    """A part from `part_spec`'s form (a checkpoint's hyperparameters); anything else as it is."""
    if not (isinstance(value, dict) and "class_path" in value):
        return value
    from importlib import import_module

    module, _, name = value["class_path"].rpartition(".")
    return getattr(import_module(module), name)(**value.get("init_args", {}))


def part_name(part: Any) -> str:
    """A part's class: its bare name for the package's and diffusers' own, else its import path."""
    cls = type(part)
    if cls.__module__.startswith(("ldm_lightning.", "diffusers.")):
        return cls.__name__
    return f"{cls.__module__}.{cls.__qualname__}"


def prefixed(config: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`config`'s keys, each starting with `prefix` (added where missing)."""
    return {k if k.startswith(prefix) else prefix + k: jsonable(v) for k, v in config.items()}


def jsonable(value: Any) -> Any:
    """Tuples as lists and anything JSON cannot hold as its text, so that settings hash the same after a reload."""
    return json.loads(json.dumps(value, default=str))


def weights_stamp(source: str, revision: str | None = None) -> str:
    """A short hash of the weight files a model or LoRA source resolves to (names, sizes, modification times):
    retrained weights at the same path give another stamp. A hub id is looked up in the local cache; one that
    is not cached gives its name alone (it will be downloaded at the revision asked for)."""
    from ldm_lightning.locations import file_stamp, is_local

    path = Path(source).expanduser()
    if not is_local(source) and not path.exists():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "model_index.json", revision=revision)
        path = Path(cached).parent if isinstance(cached, str) else path
    stamp = file_stamp(path)
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16] if stamp else "not cached"


def image_settings(source: tuple, parts: tuple, size: tuple[int, int], precision: str) -> dict[str, Any]:
    """Everything besides the prompt rows that changes an image, flat: the model (name, revision, variant and a stamp
    of its weight files), every `Sampling` field with the size and decode precision resolved, the guidance method's
    class and fields (`guidance_*`), inspection, the prediction target, the applied LoRA (path, scale, stamp) and the
    Trainer's precision.

    Args:
        source: (name or path, revision, variant) of the model.
        parts: the module's (sampling, guidance, inspection, fine-tuning method, LoRA file or None).
        size: (height, width) in pixels.
        precision: the Trainer's precision.
    """
    from ldm_lightning.generation.components import resolve
    from ldm_lightning.generation.guidance import DiffusersGuider

    name, revision, variant = source
    sampling, guidance, inspection, finetune, lora = parts
    guidance = guidance.guider if isinstance(guidance, DiffusersGuider) else guidance
    settings = {
        "format": FORMAT,
        "model": name,
        "revision": revision,
        "variant": variant,
        "weights": weights_stamp(resolve(name), revision),
        **prefixed(part_config(sampling), ""),
        "height": size[0],
        "width": size[1],
        "decode_fp32": sampling.decodes_in_fp32(precision),
        "guidance": part_name(guidance),
        **prefixed(part_config(guidance), "guidance_"),
        "precision": precision,
        "inspect": inspection.describe() or None,
        "prediction_type": finetune.prediction_type,
    }
    if lora is not None:
        settings.update(lora=str(lora.path), lora_scale=lora.scale, lora_weights=weights_stamp(str(lora.path)))
    return settings
