"""The documentation's code runs as written, and the run folder's reference lists what a run writes.

Every ```python block of the tutorials and how-to guides runs in some test: the first tutorial's in
`test_plain_lightning.py`, the own guidance and metric in `test_own_parts.py`, every other one here. A block
that needs real weights or a GPU is fenced ```python title="needs weights" and is not run.
"""

import json
import re
from pathlib import Path

import pytest
from helpers import cli_args, run_cli

from ldm_lightning.run_folder import files

DOCS = Path(__file__).parents[1] / "docs"
RUNNABLE_PAGES = sorted([*DOCS.glob("tutorials/*.md"), *DOCS.glob("how-to/*.md")])
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.S | re.M)
NEEDS_WEIGHTS = 'title="needs weights"'


def blocks(page: Path) -> list[tuple[str, str]]:
    """(info string, code) of each Python block of a page."""
    return [(m[1].strip(), m[2]) for m in FENCE.finditer(page.read_text(encoding="utf-8"))]


def run_elsewhere(page: Path, code: str) -> bool:
    """Blocks that another test runs in their own setting (a session and a DDP script; saved modules)."""
    if page == DOCS / "tutorials" / "first-images.md":
        return True  # test_plain_lightning.py::test_the_tutorials_python_blocks_run_as_written
    return page == DOCS / "how-to" / "your-own-parts.md" and code.startswith("# my_")  # test_own_parts.py


RUN_HERE = [
    pytest.param(page, code, id=f"{page.parent.name}/{page.stem}-{i}")
    for page in RUNNABLE_PAGES
    for i, (info, code) in enumerate(blocks(page))
    if info != NEEDS_WEIGHTS and not run_elsewhere(page, code)
]


def test_every_python_block_is_plain_or_marked():
    for page in RUNNABLE_PAGES:
        for info, _ in blocks(page):
            assert info in ("", NEEDS_WEIGHTS), f"{page.name}: unknown fence ```python {info}"


@pytest.mark.parametrize(("page", "code"), RUN_HERE)
def test_python_block_runs_as_written(page, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(page), "exec"), {"__name__": "__main__"})


def documented(text: str) -> set[str]:
    """Names written in code style on a page: `name`, and each of `a`, `b` in a cell."""
    return set(re.findall(r"`([^`\s]+)`", text))


def test_the_run_folder_reference_lists_every_file_and_column(tiny_model, tiny_clip, tmp_path):
    page = (DOCS / "reference" / "run-folder.md").read_text(encoding="utf-8")
    names = documented(page)
    constants = [files.MANIFEST, files.RUN_FILE, files.RESULTS, files.SUMMARY, files.GRID, files.GROUPS]
    assert [c for c in constants if c not in names] == []

    out = tmp_path / "run"
    args = cli_args("test", "--data.group_by=[kind]", model=tiny_model, clip=tiny_clip, steps=2, out=out)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "kind": k}) + "\n" for p, k in [("a red circle", "a")] * 2))
    assert run_cli([*args, f"--data.prompts={prompts}"])[0] == 0

    row = json.loads((out / files.RESULTS).read_text().splitlines()[0])
    settings = json.loads((out / files.RUN_FILE).read_text())
    summary = json.loads((out / files.SUMMARY).read_text())
    written = {*row, *settings, *settings["settings"], *summary} - {"kind"}  # `kind` is the prompt table's own
    assert sorted(written - names) == []


def test_the_key_reference_names_every_key_help_shows():
    """The generated reference page holds every option each subcommand's `--help` prints."""
    import importlib.util
    import io
    from contextlib import redirect_stdout

    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "_hooks" / "cli_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    page = reference.render()
    for name, parser in reference._parsers().items():
        with redirect_stdout(io.StringIO()):
            shown = parser.format_help()
        keys = set(re.findall(r"^\s+(--[a-z_][\w.]*)", shown, re.M)) - {"--help"}
        assert len(keys) > 50, shown[:500]
        missing = sorted(k for k in keys if f"<code>{k}</code>" not in page and f"`{k}`" not in page)
        assert not missing, f"{name}: not on the reference page: {missing}"
