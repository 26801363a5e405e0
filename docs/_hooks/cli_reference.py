"""MkDocs hook: the command-line reference, written from the LightningCLI parser at build time.

`reference/cli.md` is not a file in the repository. On every build this hook builds the parser of
`python -m ldm_lightning` (nothing is instantiated: `ParseOnly`), walks the options of `predict`, `test` and
`fit`, and writes one row per key: its name, its type and default as `--help` prints them, and its help
text. A part whose value is a class (`model.sampling`, `model.guidance`, `model.metrics`, `model.finetune`,
`model.inspect`, `model.lora`, `data`, `lr_scheduler`, …) is expanded into its nested keys the way
`--<key>.help CLASS` expands it, for each of the package's own classes that the key accepts. A key added
to the module, the data modules or a part appears here without any Markdown being edited.

Run it alone to print the page: `python docs/_hooks/cli_reference.py`.
"""

from __future__ import annotations

import html
import inspect
import io
import re
import warnings
from collections import OrderedDict
from contextlib import redirect_stderr, redirect_stdout

PAGE = "reference/cli.md"
SUBCOMMANDS = ("predict", "test", "fit")
PACKAGE = "ldm_lightning."
# Classes that the command line itself adds; a user never names them.
INTERNAL = ("ldm_lightning.cli.",)
# The package's own adapter of a diffusers guider: the command line takes the diffusers class itself.
ADAPTERS = ("ldm_lightning.generation.guidance.DiffusersGuider",)


def _parsers() -> dict:
    """The subcommand parsers of the command line, built without instantiating anything."""
    from ldm_lightning.cli import ParseOnly, make_cli

    class Parsed(ParseOnly):
        def _run_subcommand(self, subcommand: str) -> None:
            pass

    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's and jsonargparse's deprecation notes are not the page's
        cli = make_cli(["predict"], None, Parsed)
    return {name: cli._subcommand_parsers[name] for name in SUBCOMMANDS}


def _cell(text: str) -> str:
    """Table-safe Markdown: one line, pipes escaped, angle brackets as entities."""
    text = " ".join(str(text).split())
    return html.escape(text, quote=False).replace("|", "\\|")


def _code(text: str) -> str:
    text = " ".join(str(text).split())
    return "<code>" + html.escape(text, quote=False).replace("|", "&#124;") + "</code>"


def _default(value) -> str:
    from jsonargparse import Namespace

    if isinstance(value, Namespace):
        value = value.as_dict()
    if value is None:
        return "null"
    if value == "":
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict) and "class_path" in value:
        return _class_default(value)
    return str(value)


def _class_default(value: dict) -> str:
    """A class-valued default: the class, and only the arguments that differ from the class's own defaults."""
    from jsonargparse._util import import_object

    cls = import_object(value["class_path"])
    own = inspect.signature(cls.__init__).parameters
    args = {
        k: v
        for k, v in (value.get("init_args") or {}).items()
        if k not in own or own[k].default is inspect.Parameter.empty or own[k].default != v
    }
    inner = ", ".join(f"{k}: {_default(v)}" for k, v in args.items())
    if value.get("__subclasses_disabled__") and not inner:
        return "the defaults below"
    return value["class_path"].rsplit(".", 1)[-1] + (f" ({inner})" if inner else "")


def _rows(parser, skip: tuple[str, ...] = ()) -> list[dict]:
    """One row per option of `parser`: key, type, default, help, and the class-valued options to expand."""
    from jsonargparse import SUPPRESS
    from jsonargparse._actions import ActionConfigFile, _ActionConfigLoad, _ActionHelpClassPath, _ActionPrintConfig

    formatter = parser._get_formatter()
    try:
        defaults = parser.get_defaults()
    except Exception:  # a parser with required keys has no complete defaults
        defaults = None
    rows = []
    helps = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help",) or action.dest.startswith(skip):
            continue
        if isinstance(action, (ActionConfigFile, _ActionConfigLoad, _ActionPrintConfig)):
            continue
        if isinstance(action, _ActionHelpClassPath):
            helps[action.dest.removesuffix(".help")] = action
            continue
        default = action.default
        if defaults is not None:
            try:
                default = defaults[action.dest]
            except KeyError:
                pass
        rows.append(
            {
                "key": action.dest,
                "type": formatter._get_type_str(action) or "",
                "default": "" if default is SUPPRESS else _default(default),
                "help": action.help or "",
            }
        )
        if action.dest in helps:
            help_action = helps[action.dest]
            rows[-1]["help_types"] = tuple(dict.fromkeys(help_action._help_types))
            rows[-1]["sub_add_kwargs"] = dict(help_action.sub_add_kwargs)
    return rows


def _known_classes(help_types) -> tuple[list[type], list[str]]:
    """The package's own classes a class-valued key accepts (to expand), and the others (to name)."""
    from jsonargparse._typehints import get_all_subclass_paths
    from jsonargparse._util import import_object

    ours, others = [], []
    for base in help_types:
        for path in get_all_subclass_paths(base):
            if path.startswith(INTERNAL) or path in ADAPTERS:
                continue
            if path.startswith(PACKAGE) or path == "ldm_lightning":
                cls = import_object(path)
                if cls not in ours:
                    ours.append(cls)
            elif path not in others:
                others.append(path)
    return ours, others


def _class_rows(cls: type, dest: str, sub_add_kwargs: dict) -> list[dict]:
    """The keys `--<dest>.help CLASS` lists for `cls`."""
    from jsonargparse import ArgumentParser

    kwargs = dict(sub_add_kwargs)
    if "skip" in kwargs:
        kwargs["skip"] = set(kwargs["skip"])
    parser = ArgumentParser()
    parser.add_class_arguments(cls, dest, **kwargs)
    return _rows(parser)


def _import_path(cls: type) -> str:
    from jsonargparse._util import get_import_path

    return get_import_path(cls)


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ")


def _table(
    rows: list[dict], subcommands: dict[str, set[str]] | None = None, expanded: set[str] = frozenset()
) -> list[str]:
    out = ["| key | type | default | help |", "|---|---|---|---|"]
    for row in rows:
        key = f"<code>--{row['key']}</code>"
        if row["key"] in expanded:
            key = f"[{key}](#{_anchor(row['key'])})"
        where = subcommands.get(row["key"]) if subcommands else None
        if where is not None and set(where) != set(SUBCOMMANDS):
            key += " <small>(" + ", ".join(s for s in SUBCOMMANDS if s in where) + ")</small>"
        default = row["default"]
        if isinstance(default, dict):  # differs between subcommands
            by_value: dict[str, list[str]] = {}
            for sub, value in default.items():
                by_value.setdefault(value, []).append(sub)
            default = "; ".join(f"{', '.join(subs)}: {_code(v)}" for v, subs in by_value.items())
        elif default == "the defaults below":
            default = "[the defaults below](#" + _anchor(row["key"]) + ")"
        elif default != "":
            default = _code(default)
        out.append(f"| {key} | {_code(row['type']) if row['type'] else ''} | {default} | {_cell(row['help'])} |")
    return out


def _merge(per_sub: dict[str, list[dict]]) -> tuple[list[dict], dict[str, set[str]]]:
    """Rows of several subcommands as one list: a key once, the subcommands that have it, differing defaults."""
    merged: OrderedDict[str, dict] = OrderedDict()
    where: dict[str, set[str]] = {}
    for sub, rows in per_sub.items():
        for row in rows:
            key = row["key"]
            where.setdefault(key, set()).add(sub)
            if key not in merged:
                merged[key] = dict(row, defaults={sub: row["default"]})
            else:
                merged[key]["defaults"][sub] = row["default"]
    for row in merged.values():
        defaults = row.pop("defaults")
        if len(set(defaults.values())) > 1:
            row["default"] = defaults
    return list(merged.values()), where


def _expansion(row: dict, level: int = 3) -> list[str]:
    """The nested keys of a class-valued key, for each of the package's classes it accepts."""
    key, help_types = row["key"], row["help_types"]
    ours, others = _known_classes(help_types)
    lines = [f"{'#' * level} `--{key}` {{#{_anchor(key)}}}", ""]
    if len(ours) == 1 and ours[0] in help_types and not others:
        cls = ours[0]
        lines.append(f"A group of settings, `{_import_path(cls)}`: {_cell(_summary(cls))}")
    else:
        accepted = ", ".join(f"`{t.__module__}.{t.__qualname__}`" for t in help_types)
        lines.append(
            f"A class: a subclass of {accepted}, given by name or as `class_path` with `init_args`. "
            f"`--{key}.help CLASS` prints the keys of any such class."
        )
        if others:
            names = ", ".join(f"`{p}`" for p in others[:40])
            more = f" and {len(others) - 40} more" if len(others) > 40 else ""
            lines += ["", f"Other classes it accepts, not expanded here: {names}{more}."]
    lines.append("")
    for cls in ours:
        rows = _class_rows(cls, key, row.get("sub_add_kwargs", {}))
        if len(ours) > 1 or cls not in help_types:
            lines += [f"**`{_import_path(cls)}`**: {_cell(_summary(cls))}", ""]
        if rows:
            lines += _table(rows, expanded=set())
        else:
            lines.append("No settings.")
        lines.append("")
    return lines


def _anchor(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")


GROUPS = OrderedDict(
    [
        ("top", ("Run", "Keys of the run itself.")),
        ("model", ("`model.*`: the module", "The constructor arguments of `LatentDiffusionModule`.")),
        (
            "data",
            (
                "`data.*`: the prompts or images",
                "The data module: `PromptDataModule` for `predict` and `test`, `ImageCaptionDataModule` for `fit`.",
            ),
        ),
        ("optimizer", ("`optimizer`, `lr_scheduler`", "What `fit` optimizes with (`configs/fit/*.yaml` set both).")),
        (
            "trainer",
            ("`trainer.*`: Lightning's Trainer", "Lightning's own `Trainer` arguments, as Lightning documents them."),
        ),
    ]
)


def _group(key: str) -> str:
    head = key.split(".", 1)[0]
    if head in ("model", "data", "trainer"):
        return head
    if head in ("optimizer", "lr_scheduler"):
        return "optimizer"
    return "top"


def _meta_keys(parsers: dict) -> list[str]:
    """The options that print or read configuration rather than set a key: `--config`, `--print_config`, a group's
    own YAML (`--model FILE`) and each class-valued key's `--<key>.help`, of any subcommand."""
    from jsonargparse._actions import ActionConfigFile, _ActionConfigLoad, _ActionHelpClassPath, _ActionPrintConfig

    kinds = (ActionConfigFile, _ActionConfigLoad, _ActionHelpClassPath, _ActionPrintConfig)
    keys = {
        action.option_strings[0]
        for parser in parsers.values()
        for action in parser._actions
        if isinstance(action, kinds) and action.option_strings
    }
    return sorted(keys)


def render() -> str:
    parsers = _parsers()
    rows, where = _merge({sub: _rows(parser) for sub, parser in parsers.items()})
    meta = ", ".join(f"`{key}`" for key in _meta_keys(parsers))
    lines = [
        "# Command-line keys",
        "",
        "Every key of `python -m ldm_lightning predict | test | fit`, written from the command line's own parser",
        "each time these pages are built, so it says what `--help` says: type, default and help text. A key",
        "that only some subcommands have names them; a default that differs between subcommands is given for",
        "each. A key whose value is a class links to its nested keys, listed for each of the package's own",
        "classes it accepts; `--<key>.help CLASS` prints the same on the command line, for any class.",
        "",
        "Keys go on the command line (`--model.sampling.num_inference_steps 50`) or into a YAML file given with",
        "`--config` (`model: {sampling: {num_inference_steps: 50}}`); see",
        "[Compose a configuration](../how-to/configure.md).",
        "",
        "Options that read or print configuration instead of setting a key: `--config FILE` (a YAML file; several",
        "are merged in order), `--print_config` (the whole configuration the command would run with, as YAML),",
        "`--<group> FILE` (a YAML of one group's keys, e.g. `--trainer trainer.yaml`) and `--<key>.help CLASS`",
        f"(a class's nested keys). All of them: {meta}.",
        "",
    ]
    for name, (title, intro) in GROUPS.items():
        members = [r for r in rows if _group(r["key"]) == name]
        if not members:
            continue
        nested = [r for r in members if "help_types" in r and _known_classes(r["help_types"])[0]]
        lines += [f"## {title}", "", intro, ""]
        lines += _table(members, where, expanded={r["key"] for r in nested})
        lines.append("")
        for row in nested:
            lines += _expansion(row)
    return "\n".join(lines) + "\n"


def on_files(files, config):
    """MkDocs event: add the generated page to the site's files."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    return files


if __name__ == "__main__":
    print(render())
