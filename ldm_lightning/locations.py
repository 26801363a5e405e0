"""Where a name points: a local file or folder, or a Hugging Face hub id; and stamps of local files for cache keys."""

import os
from pathlib import Path


def written_as_path(name: str) -> bool:
    """The user wrote a path: it starts with `.`, `/` or `~` (a hub id never does)."""
    return name.startswith((".", "/", "~"))


def is_local(name: str) -> bool:
    """A local file or folder rather than a hub model id (`org/name`): written as a path, with other than
    exactly one slash, or present on disk."""
    return written_as_path(name) or name.count("/") != 1 or os.path.exists(os.path.expanduser(name))


def file_stamp(path: str | Path) -> list:
    """(name, size, mtime) of a local file, or of every file under a local folder; [] for a hub id or a
    missing file. Keys caches and fingerprints: a changed file changes its stamp."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    return [
        [str(p.relative_to(path)) if path.is_dir() else p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files
    ]
