"""Reference (real) images for distribution metrics: find them, decode them, and cache their features.

`data.reference` is a folder (searched recursively), a glob, or a table (.csv/.tsv/.jsonl/.parquet or a saved
dataset) whose `image` column holds paths relative to the table's folder. Features are cached in the user's
cache folder (`$LDM_LIGHTNING_CACHE`, else `$XDG_CACHE_HOME/ldm_lightning` or `~/.cache/ldm_lightning`), one
file per extractor, keyed by every file's path, size and modification time and by the extractor with its
preprocessing: every run of a sweep reuses them, and a changed image or extractor computes them again.
"""

import glob
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldm_lightning.errors import UserError
from ldm_lightning.evaluation.features import extract
from ldm_lightning.locations import file_stamp
from ldm_lightning.run_folder.files import atomic_write
from ldm_lightning.tables import is_saved_dataset, is_table_file, read_saved_dataset, read_table_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
BATCH = 32


def list_reference(spec: str) -> list[Path]:
    """The reference image files named by `spec`, sorted (their order fixes KID's subsets)."""
    path = Path(spec).expanduser()
    if is_table_file(path) or is_saved_dataset(path):
        files = _table_files(path)
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    elif glob.has_magic(spec):
        matches = (Path(p) for p in glob.glob(str(path), recursive=True))
        files = sorted(p for p in matches if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise UserError(f"data.reference: nothing at {spec!r}; give a folder of images, a glob or a table")
    if not files:
        raise UserError(f"data.reference: no .png/.jpg/.webp images in {spec!r}; give a folder or glob that holds some")
    return files


def _table_files(path: Path) -> list[Path]:
    import datasets

    if is_saved_dataset(path):
        table = read_saved_dataset(path, "data.reference")
        table = next(iter(table.values())) if isinstance(table, datasets.DatasetDict) else table
        folder = path
    else:
        table = read_table_file(path, "data.reference")
        folder = path.parent
    if "image" not in table.column_names:
        raise UserError(
            f"data.reference: {str(path)!r} has no `image` column (columns: {', '.join(table.column_names)}); "
            "add one holding image paths relative to the table's folder"
        )
    paths = table["image"]
    if paths and not isinstance(paths[0], str):
        raise UserError(f"data.reference: the `image` column of {str(path)!r} must hold file paths (text)")
    return [folder / p for p in paths]


def load_image(path: Path) -> torch.Tensor | None:
    """An image file as uint8 RGB (3, H, W), or None when it is missing or cannot be decoded."""
    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def cache_file(cache_dir: Path, files: list[Path], name: str, identity: str) -> Path:
    """Where one extractor's features of these files are cached."""
    key = json.dumps([[[str(f.resolve()), file_stamp(f)] for f in files], name, identity])
    return cache_dir / f"reference-{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def reference_cache_dir() -> Path:
    """Where reference features are cached (see the module docstring)."""
    if os.environ.get("LDM_LIGHTNING_CACHE"):
        return Path(os.environ["LDM_LIGHTNING_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "ldm_lightning"


def reference_features(
    files: list[Path],
    extractors: dict[str, torch.nn.Module],
    cache_dir: Path,
    device: torch.device | str = "cpu",
    identities: dict[str, str] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every extractor's features of the readable reference images (cached), and the files that were skipped.

    `identities` names what each extractor's features depend on (its weights and preprocessing): the cache key.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    identities = identities or {name: net.identity for name, net in extractors.items()}
    caches = {name: cache_file(cache_dir, files, name, identities[name]) for name in extractors}
    features, skipped = {}, None
    for name, cache in caches.items():
        if cache.is_file():
            with np.load(cache) as stored:
                features[name], skipped = stored["features"], [str(s) for s in stored["skipped"]]
    todo = {name: net for name, net in extractors.items() if name not in features}
    if todo:
        computed, skipped = _compute(files, todo, device)
        for name, values in computed.items():
            buffer = io.BytesIO()
            np.savez(buffer, features=values, skipped=np.array(skipped, dtype=str))
            atomic_write(caches[name], buffer.getvalue())
            features[name] = values
    return features, skipped or []


def _compute(
    files: list[Path], extractors: dict[str, torch.nn.Module], device: torch.device | str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Decode each file once; runs of equal-sized images go through the extractors together."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in extractors}
    skipped, batch = [], []

    def flush() -> None:
        if batch:
            for name, values in extract(extractors, torch.stack(batch).to(device)).items():
                parts[name].append(values)
            batch.clear()

    for path in files:
        image = load_image(path)
        if image is None:
            skipped.append(str(path))
            continue
        if batch and (image.shape != batch[0].shape or len(batch) == BATCH):
            flush()
        batch.append(image)
    flush()
    if not any(parts.values()):
        raise UserError(
            f"data.reference: none of the {len(files)} images could be read (first: {skipped[0]}); "
            "give PNG, JPEG or WebP files"
        )
    return {name: torch.cat(values).numpy() for name, values in parts.items()}, skipped
