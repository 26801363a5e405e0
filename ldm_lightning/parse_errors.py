"""jsonargparse's parse errors as one line, `<key>: <what is wrong>; <what to do>`, with no usage dump.

What the exception jsonargparse hands to `ArgumentParser.error` says by its type is read from it: an
unknown key is a `KeyError`, a config file that is not valid YAML carries PyYAML's `MarkedYAMLError`
(problem, line, column) in its cause chain, and no exception at all means argparse's own
"unrecognized arguments". What jsonargparse says only in words (which key, which type was expected,
which value was given, a missing file) is read from its message text, in the formats of the versions
pinned in pyproject.toml; tests/test_errors.py checks the whole line of each kind against them.
"""

import re

from lightning.pytorch.cli import LightningArgumentParser

from ldm_lightning.errors import UserError
from ldm_lightning.moved_keys import moved_message

HELP_HINT = "`--help` lists every key and its type"
SUBCOMMANDS = ("predict", "test", "fit")

# jsonargparse's message formats (_core.py, _typehints.py, _actions.py).
KEY = re.compile(r'Parser key "([^"]+)"')  # 'Parser key "model.height": …', nested per level
UNKNOWN_OPTION = re.compile(r"(?:Group '([^']+)' )?.*?(?:option|Option) '([^']+)'")  # NSKeyError's text
MISSING_FILE = re.compile(r"File does not exist: (.*)")  # PathError's text
# "Expected a <class 'int'>", "Expected a typing.Literal['ddim', …]", "Expected a list[str]" (one per line).
EXPECTED = re.compile(r"Expected a (<class '[\w.]+'>|typing\.Literal\[[^\]]*\]|[\w.\[\], ]+?)(?:\.|$)", re.M)
GOT_VALUE = re.compile(r"Got value: (.*)")  # after the expected type, when a single type was tried
GIVEN_VALUE = re.compile(r"Given value: (.*)")  # after a Union's errors
SUBTYPES = re.compile(r"Subtypes: \[(.*)\]$", re.M)  # a Union's accepted types
NESTED_VALUE = re.compile(r"NestedArg\(key='[^']*', val=(.*)\)$")  # a subclass key's value, as given


class OneLineParser(LightningArgumentParser):
    """LightningCLI's parser, whose top-level parse errors become one `UserError` line (no usage dump)."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # jsonargparse's inner parsers raise for their callers to handle
            super().error(message, ex)
        raise UserError(describe_parse_error(message, ex)) from None


def causes(error: BaseException | None) -> list[BaseException]:
    """`error` and the exceptions it was raised from, outermost first."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def describe_parse_error(message: str, error: BaseException | None = None) -> str:
    """jsonargparse's multi-line `message` and the exception behind it as `<key>: <what is wrong>; <what to do>`."""
    text = message.strip()
    chain = causes(error)
    if error is None and text.lower().startswith("unrecognized arguments:"):  # argparse's (or jsonargparse's) words
        given = text.split(":", 1)[1].split()
        words = [w for w in given if w not in SUBCOMMANDS] or given
        key = words[0].split("=")[0]
        return moved_message(key.lstrip("-")) or f"{key}: unknown key or stray argument; {HELP_HINT}"
    if isinstance(error, KeyError):  # jsonargparse's NSKeyError: a key that no class accepts
        found = UNKNOWN_OPTION.search(str(error))
        key = ".".join(k for k in found.groups() if k) if found else str(error).strip("'\"")
        return moved_message(key) or f"{key}: unknown key; {HELP_HINT}"
    if yaml_error := next((c for c in chain if is_yaml_error(c)), None):
        return f"--config: not valid YAML ({describe_yaml_error(yaml_error)}); fix the file"
    keys = KEY.findall(text)
    key = ".".join(keys) if keys else "arguments"
    if moved := next((moved_message(k) for k in moved_keys_in(text, key) if moved_message(k)), None):
        return moved
    if missing := MISSING_FILE.search(text):
        return f"{key}: file does not exist: {missing[1].strip()}; check the path"
    if expected := expected_types(text):
        value = given_value(text)
        got = f", got {value}" if value else ""
        return f"{key}: expected {' or '.join(expected)}{got}; {HELP_HINT}"
    lines = [line.strip() for line in text.splitlines() if line.strip() and "Parser key" not in line]
    return f"{key}: {lines[-1] if lines else text}; {HELP_HINT}"


def moved_keys_in(text: str, key: str) -> list[str]:
    """Keys the message names that may have moved: the key in error, and a nested key jsonargparse reports as an
    unexpected one inside it ("Group 'model' does not accept nested key 'guidance_scale'")."""
    found = [key]
    for nested in re.findall(r"nested key '([\w.]+)'", text):
        found.append(f"{key}.{nested}" if key != "arguments" else nested)
    return found


def is_yaml_error(error: BaseException) -> bool:
    import yaml

    return isinstance(error, yaml.MarkedYAMLError)


def describe_yaml_error(error) -> str:
    """PyYAML's problem, its context and where it is (1-based line and column, as editors count)."""
    what = ": ".join(part for part in (error.context, error.problem) if part)
    mark = error.problem_mark or error.context_mark
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark else what


def innermost(text: str) -> str:
    """The part of the message about the innermost key (nested keys repeat "Parser key" per level)."""
    keys = list(KEY.finditer(text))
    return text[keys[-1].end() :] if keys else text


def expected_types(text: str) -> list[str]:
    """The types the innermost key accepts, readable: `int`, `str or list[str]`, `one of ddim, pndm, …`.

    A Union's own list of subtypes is read when there is one (its errors also name the types of
    list elements); None is left out (it is the default, not a value to type).
    """
    block = innermost(text)
    union = SUBTYPES.search(block)
    found = split_top_level(union[1]) if union else EXPECTED.findall(block)
    expected, choices = [], []
    for name in found:
        if literal := re.match(r"typing\.Literal\[(.*)\]", name):
            choices += [c.strip(" '") for c in literal[1].split(",") if c.strip(" '") not in choices]
            continue
        name = re.sub(r"<class '([\w.]+)'>", r"\1", name)
        if name not in ("NoneType", *expected):
            expected.append(name)
    if choices:
        expected.append("one of " + ", ".join(choices))
    return expected


def split_top_level(items: str) -> list[str]:
    """`"<class 'str'>, list[str], typing.Literal['a', 'b']"` split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(items):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(items[start:i].strip())
            start = i + 1
    return [*parts, items[start:].strip()]


def given_value(text: str) -> str:
    """The value the user gave to the innermost key, as jsonargparse prints it."""
    block = innermost(text)
    # A Union prints the whole value last ("Given value"); a single type after its name ("Got value").
    found = (GIVEN_VALUE if SUBTYPES.search(block) else GOT_VALUE).search(block) or GIVEN_VALUE.search(text)
    value = found[1].strip() if found else ""
    nested = NESTED_VALUE.match(value)
    return nested[1] if nested else value
