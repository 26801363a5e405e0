"""The output folder: safe file names, atomic writes, the manifest and results (one file per process, merged by rank
0), feature shards, and which run a folder belongs to.

A folder holds one run: `run.json` records its fingerprint (the settings that change pixels and
the prompt rows). Starting the same run again resumes it; a different run never lands in the same
folder: it goes to `<dir>-1`, `<dir>-2`, … instead, so nothing is mixed or overwritten.
"""

import errno
import hashlib
import io
import json
import os
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from ldm_lightning.errors import UserError

# A run folder's files, by name (the writer writes them; `compare` and the tests read them).
MANIFEST = "manifest.jsonl"
RUN_FILE = "run.json"
RESULTS = "results.jsonl"
SUMMARY = "summary.json"
GRID = "grid.png"
GROUPS = "groups.md"


def fingerprint(settings: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """A short hash of the settings and the prompt rows `(index, prompt, negative_prompt, seed)`."""
    keyed = [[r["index"], r["prompt"], r["negative_prompt"], r["seed"]] for r in rows]
    blob = json.dumps([settings, keyed], sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def choose_run_dir(base: str | Path, run_fingerprint: str) -> Path:
    """`base` if it is free or holds this very run, else the first such `base-N`."""
    base = Path(base)
    for n in range(10_000):
        candidate = base if n == 0 else base.with_name(f"{base.name}-{n}")
        if candidate.exists() and not candidate.is_dir():
            raise UserError(f"output_dir: {candidate} is a file, not a folder; choose another --output_dir")
        # Hidden entries are other processes' probes and temporary files: such a folder is still free.
        if not candidate.exists() or not any(not p.name.startswith(".") for p in candidate.iterdir()):
            return candidate
        run = candidate / RUN_FILE
        if run.is_file() and json.loads(run.read_text()).get("fingerprint") == run_fingerprint:
            return candidate
    raise RuntimeError(f"no free output folder next to {base}")


def check_writable(folder: Path) -> None:
    """Create the run folder and write a test file in it: fail at start, not after the first batch."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{secrets.token_hex(4)}"  # one per process: ranks start together
        atomic_write(probe, b"ok")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"output_dir: cannot write to {folder} ({err.strerror}); choose a writable --output_dir on a "
            "filesystem with free space"
        ) from None


def image_name(index: int, prompt: str, max_chars: int = 48) -> str:
    """`00012-a-red-circle.png`: the row index keeps it unique; the rest is ASCII, no separators."""
    ascii_ = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_.lower()).strip("-")[:max_chars].strip("-")
    return f"{index:05d}-{slug or 'prompt'}.png"


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file.

    The file ends with the permissions an ordinary `open(path, "w")` gives (0o666 less the umask),
    so colleagues and a TensorBoard server running as another user can read what the umask lets
    them. `tempfile.mkstemp` would leave 0o600; reading the umask would mean changing it, which is
    process-wide, so the kernel applies it instead when the temporary file is created.
    """
    try:
        fd, tmp = create_temporary(path)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full disk, say: name the file the user knows, not the temporary one
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_temporary(path: Path) -> tuple[int, Path]:
    """A new hidden file next to `path`, created with mode 0o666 under the umask, open for writing."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line with a single `write`, fsynced: a row on disk is whole or, after a kill, a torn last line.

    One process appends to a file (see `rank_file`): O_APPEND keeps lines of several writers apart on a local
    disk, but not on NFS, where each client computes the end of the file itself.
    """
    line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # as `open(path, "a")`: the umask decides
    try:
        written = os.write(fd, line)
        if written < len(line):
            # A full disk (or file-size limit) took part of the line: cut it off again, so the file
            # holds only whole rows, and report the error the next write would have given.
            os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR) - written)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file. A torn last line (a run killed while appending) is dropped; a line that is not a
    JSON object anywhere else is damage no kill leaves, and an error naming the file and the line."""
    return [row for row, _ in jsonl_lines(path)]


def jsonl_lines(path: Path) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Each row of a JSONL file with its line as written (as `read_jsonl` reads them)."""
    if not path.is_file():
        return
    # Bytes split only at \n and \r: `str.splitlines` would also split at U+2028, which a prompt may hold.
    lines = path.read_bytes().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
            if number == len(lines):
                break
            reason = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
            raise UserError(
                f"{path}: line {number} is not a JSON row ({reason}); repair or delete that line (a run folder "
                "makes a deleted row's image again when the run resumes)"
            ) from None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {number} is not a JSON object; repair or delete that line")
        yield row, line


def rank_file(path: Path, rank: int) -> Path:
    """The file process `rank` appends `path`'s rows to: `path` itself on rank 0, `<stem>-rank<R>.jsonl` beside it
    on the others, so that every file has one writer (`append_jsonl`). Rank 0 merges them (`merge_rank_files`)."""
    return path if rank == 0 else path.with_name(f"{path.stem}-rank{rank}{path.suffix}")


def rank_files(path: Path) -> list[Path]:
    """`path` and the other ranks' files of it (`rank_file`) that exist, rank 0's first."""
    pattern = re.compile(rf"{re.escape(path.stem)}-rank(\d+){re.escape(path.suffix)}")
    others = {int(m[1]): p for p in path.parent.iterdir() if (m := pattern.fullmatch(p.name))}
    return [path, *(others[rank] for rank in sorted(others))]


def read_rank_files(path: Path) -> list[dict[str, Any]]:
    """The rows of `path` and of every other rank's file of it, rank by rank."""
    return [row for part in rank_files(path) for row in read_jsonl(part)]


def merge_rank_files(path: Path, keep: Callable[[dict[str, Any]], bool] = lambda row: True) -> dict[int, bytes]:
    """Replace `path` with the rows of it and of every other rank's file that `keep` accepts, one per index (the last
    wins, rank by rank), in index order, and remove the other ranks' files. Only rank 0 calls it, while no process
    appends: when a run starts and when it ends. Returns the kept rows' lines by index: kept as written, not as
    parsed rows, they take a few hundred bytes each however many columns a row has."""
    lines = {row["index"]: line for part in rank_files(path) for row, line in jsonl_lines(part) if keep(row)}
    atomic_write(path, b"".join(lines[i] + b"\n" for i in sorted(lines)))
    for part in rank_files(path)[1:]:
        part.unlink(missing_ok=True)
    return lines


def on_disk(folder: Path, decode: bool = True) -> Callable[[dict[str, Any]], bool]:
    """Whether a row's image is in `folder` (and, with `decode`, decodes).
    Decoding every PNG is for a folder left by another process (resume). Within a run it is not
    needed: each row is appended only after its image was renamed into place whole.
    """

    def found(row: dict[str, Any]) -> bool:
        try:
            if decode:
                with Image.open(folder / row["image"]) as im:
                    im.load()
                return True
            return (folder / row["image"]).is_file()
        except (OSError, KeyError, ValueError):
            return False

    return found


FEATURES_DIR = "features"


def save_features(folder: Path, rank: int, rows: list[dict[str, Any]]) -> None:
    """One batch's image features (`row["features"]`: name -> vector) as `features/rank<R>-<first index>.npz`.

    Written atomically before the batch's rows are appended, so a finished row always has its features.
    """
    rows = [r for r in rows if r.get("features")]
    if not rows:
        return
    import numpy as np

    (folder / FEATURES_DIR).mkdir(exist_ok=True)
    arrays = {name: np.stack([r["features"][name] for r in rows]) for name in rows[0]["features"]}
    buffer = io.BytesIO()
    np.savez(buffer, index=np.array([r["index"] for r in rows]), **arrays)
    atomic_write(folder / FEATURES_DIR / f"rank{rank}-{rows[0]['index']:06d}.npz", buffer.getvalue())


def load_features(folder: Path, indices: list[int]) -> dict[str, Any]:
    """The stored features of rows `indices`, in that order, from every rank's shards (of duplicates the last shard
    in name order wins). Each shard is read once: an npz member is decompressed again at every access."""
    import numpy as np

    position = {index: i for i, index in enumerate(indices)}
    out: dict[str, np.ndarray] = {}
    found = np.zeros(len(indices), dtype=bool)
    for shard in sorted((folder / FEATURES_DIR).glob("rank*.npz")):
        with np.load(shard) as stored:
            arrays = {name: stored[name] for name in stored.files}
        pairs = [(row, position[index]) for row, index in enumerate(arrays.pop("index").tolist()) if index in position]
        if not pairs:
            continue
        rows, targets = (np.array(side) for side in zip(*pairs))
        for name, values in arrays.items():
            if name not in out:
                out[name] = np.empty((len(indices), *values.shape[1:]), dtype=values.dtype)
            out[name][targets] = values[rows]
        found[targets] = True
    if not found.all():
        missing = [indices[i] for i in np.flatnonzero(~found)]
        raise RuntimeError(f"{folder / FEATURES_DIR}: no stored features for rows {missing[:5]}")
    return out
