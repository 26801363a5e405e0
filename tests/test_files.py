"""Run-folder files end with the permissions an ordinary write would have under the process's umask."""

import os
import stat

import pytest

from ldm_lightning.run_folder.files import append_jsonl, atomic_write


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
