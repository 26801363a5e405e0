"""Run-folder files: an ordinary write's permissions, rows read back whole or refused by line, one writer per file,
feature shards read once."""

import json
import os
import stat

import numpy as np
import pytest

from ldm_lightning.errors import UserError
from ldm_lightning.run_folder.files import append_jsonl, atomic_write, load_features, read_jsonl, save_features


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=oct)
def test_written_files_have_an_ordinary_writes_permissions(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with open(tmp_path / "ordinary.txt", "w") as f:  # the reference: what `open` gives
            f.write("x")
        atomic_write(tmp_path / "image.png", b"png")
        atomic_write(tmp_path / "image.png", b"again")  # replacing a file keeps the same rule
        append_jsonl(tmp_path / "manifest.jsonl", {"index": 0})
    finally:
        os.umask(previous)
    expected = mode(tmp_path / "ordinary.txt")
    assert expected == 0o666 & ~umask  # the kernel's rule, so the reference is what we think it is
    assert mode(tmp_path / "image.png") == expected and (tmp_path / "image.png").read_bytes() == b"again"
    assert mode(tmp_path / "manifest.jsonl") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "image.png",
        "manifest.jsonl",
        "ordinary.txt",
    ]  # no temporaries


def test_a_failed_write_names_the_file_the_user_knows(tmp_path):
    target = tmp_path / "missing-folder" / "image.png"
    with pytest.raises(FileNotFoundError) as raised:
        atomic_write(target, b"png")
    assert raised.value.filename == str(target)


def test_only_a_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "manifest.jsonl"
    for i in range(3):
        append_jsonl(path, {"index": i, "prompt": f"line\u2028separator {i}"})  # U+2028 is no line break in JSONL
    with open(path, "ab") as f:
        f.write(b'{"index": 3, "pro')  # a run killed while appending
    assert [r["index"] for r in read_jsonl(path)] == [0, 1, 2]
    assert read_jsonl(path)[1]["prompt"] == "line\u2028separator 1"

    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([lines[0], b'{"index": 1, "prompt": "x"\n', *lines[2:]]))  # damage in the middle
    with pytest.raises(UserError) as raised:
        read_jsonl(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: line 2 is not a JSON row") and "\n" not in message

    path.write_bytes(lines[0] + b"\xff\xfe not UTF-8\n" + lines[1])
    with pytest.raises(UserError, match="line 2 is not a JSON row"):
        read_jsonl(path)


def test_each_rank_appends_to_its_own_file_and_rank_0_merges_them(tmp_path):
    from ldm_lightning.run_folder.files import merge_rank_files, rank_file, read_rank_files

    path = tmp_path / "results.jsonl"
    assert rank_file(path, 0) == path and rank_file(path, 3) == tmp_path / "results-rank3.jsonl"
    for index, rank in [(0, 0), (3, 1), (1, 1), (2, 10), (4, 0)]:
        append_jsonl(rank_file(path, rank), {"index": index, "rank": rank})
    with open(rank_file(path, 10), "ab") as f:
        f.write(b'{"index": 5')  # torn by a kill: left out, and gone with its file after the merge
    rows = read_rank_files(path)
    assert [r["rank"] for r in rows] == [0, 0, 1, 1, 10]  # rank by rank, rank 10 after rank 1
    kept = merge_rank_files(path, keep=lambda row: row["index"] != 3)
    assert [json.loads(line)["index"] for line in path.read_text().splitlines()] == [0, 1, 2, 4]
    assert {i: json.loads(line) for i, line in kept.items()} == {r["index"]: r for r in rows if r["index"] != 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]


def test_features_are_read_once_per_shard_member(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    stored = {i: {"clip": rng.normal(size=8), "inception": rng.normal(size=4)} for i in range(12)}
    for rank, first in [(0, 0), (1, 4), (0, 8)]:
        rows = [{"index": i, "features": stored[i]} for i in range(first, first + 4)]
        save_features(tmp_path, rank, rows)
    stored[5] = {"clip": np.zeros(8), "inception": np.zeros(4)}
    save_features(tmp_path, 1, [{"index": 5, "features": stored[5]}])  # row 5 again: rank1-000005 comes later

    reads = []
    member = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(
        np.lib.npyio.NpzFile, "__getitem__", lambda self, key: (reads.append(key), member(self, key))[1]
    )
    wanted = [11, 0, 5, 7, 3]
    features = load_features(tmp_path, wanted)
    assert len(reads) == 4 * 3  # four shards of three members (index, clip, inception), each read once
    for name in ("clip", "inception"):
        assert features[name].shape == (len(wanted), len(stored[0][name]))
        np.testing.assert_array_equal(features[name], np.stack([stored[i][name] for i in wanted]))
    with pytest.raises(RuntimeError, match=r"no stored features for rows \[12\]"):
        load_features(tmp_path, [1, 12])
