"""The configuration reference, generated from the schema in :mod:`.schema`.

Every leaf key of :class:`~.config.Config` is one row: its dotted key, its type, its default written as
TOML, and its meaning (``docs.DOCS``, else the dataclass field's ``metadata["doc"]``). The walk
recurses into any field whose default is itself a dataclass (a nested table, e.g. ``[unlearning.gate]``),
naming its keys with dots.

    python -m ostracon.cluster.config_reference                     # print the table
    python -m ostracon.cluster.config_reference --write README.md   # put it between the README's markers
    python -m ostracon.cluster.config_reference --check README.md   # exit 1 (with a diff) if it differs
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .docs import DOCS
from .schema import Config

START_MARKER = "<!-- config-reference:start -->"
END_MARKER = "<!-- config-reference:end -->"
COMMAND = "python -m ostracon.cluster.config_reference --write README.md"


class ConfigReferenceError(ValueError):
    """The schema and its documentation disagree, or a README lacks the markers."""


@dataclass(frozen=True)
class Key:
    """One leaf key of the schema."""

    key: str  # dotted, e.g. "training.lr"
    type: str  # bool, int, float, string, list or table
    default: Any  # the dataclass default, as the schema holds it
    doc: str | None  # DOCS[key], else the field's metadata["doc"], else None

    @property
    def toml_default(self) -> str:
        return toml_value(self.default)


def iter_keys(root: Any = None, prefix: str = "") -> Iterator[Key]:
    """Every leaf key of ``root`` (a dataclass or instance; default :class:`Config`), in field order.

    A field whose default is a dataclass instance is a nested table: its own fields are walked, their keys
    prefixed with the field's name and a dot. Any other field is a leaf.
    """
    instance = Config() if root is None else (root() if isinstance(root, type) else root)
    for f in dataclasses.fields(instance):
        key = f"{prefix}{f.name}"
        default = getattr(instance, f.name)
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            yield from iter_keys(default, key + ".")
            continue
        doc = DOCS.get(key)
        if doc is None:
            doc = f.metadata.get("doc")
        yield Key(key, type_name(default, key), default, doc)


def leaf_keys() -> list[str]:
    return [k.key for k in iter_keys()]


def table_keys(root: Any = None, prefix: str = "") -> list[str]:
    """Dotted names of the nested tables (sections and nested dataclasses): ``data``, ``unlearning.gate``."""
    instance = Config() if root is None else (root() if isinstance(root, type) else root)
    out = []
    for f in dataclasses.fields(instance):
        default = getattr(instance, f.name)
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            out.append(prefix + f.name)
            out.extend(table_keys(default, prefix + f.name + "."))
    return out


def free_tables() -> list[str]:
    """Leaf keys whose value is a free-form table (``model.params``): any key below them is the user's."""
    return [k.key for k in iter_keys() if k.type == "table"]


def missing_docs() -> list[str]:
    """Leaf keys with no meaning in DOCS nor in their field's metadata."""
    return [k.key for k in iter_keys() if not k.doc]


def stale_docs() -> list[str]:
    """DOCS entries for keys the schema does not have (renamed or removed keys)."""
    known = set(leaf_keys())
    return sorted(key for key in DOCS if key not in known)


def type_name(value: Any, key: str = "?") -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "table"
    raise ConfigReferenceError(f"{key}: no TOML type for a default of type {type(value).__name__}")


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(value: Any) -> str:
    """``value`` as an inline TOML literal: ``"mlp"``, ``0.1``, ``["nnm"]``, ``{}``, ``true``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-trip form, always with a "." or an exponent
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's, \uXXXX included
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    raise ConfigReferenceError(f"no TOML literal for {value!r}")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _cell(text: str) -> str:
    """One markdown table cell: on one line, with every ``|`` escaped (code spans included)."""
    text = " ".join(text.split())
    return re.sub(r"(?<!\\)\|", r"\\|", text)


def render_markdown() -> str:
    """The configuration table (markdown, ending with a newline). Raises if a key has no meaning."""
    missing = missing_docs()
    if missing:
        raise ConfigReferenceError(
            "config key(s) without a meaning: " + ", ".join(missing)
            + "; add them to cluster/config/docs.py DOCS (or field(metadata={'doc': ...}))"
        )
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for k in iter_keys():
        lines.append(f"| `{k.key}` | {k.type} | `{_cell(k.toml_default)}` | {_cell(k.doc or '')} |")
    return "\n".join(lines) + "\n"


def _split(text: str, path: str) -> tuple[str, str, str]:
    """``text`` as (up to and including the start marker's line, the table, from the end marker's line on)."""
    if text.count(START_MARKER) != 1 or text.count(END_MARKER) != 1:
        raise ConfigReferenceError(f"{path}: needs exactly one {START_MARKER} line and one {END_MARKER} line")
    start, end = text.index(START_MARKER), text.index(END_MARKER)
    head_end = text.find("\n", start) + 1
    tail_start = text.rfind("\n", 0, end) + 1
    if head_end == 0 or end < start or tail_start < head_end or text[tail_start:end].strip():
        raise ConfigReferenceError(f"{path}: {START_MARKER} and {END_MARKER} must be on their own lines, "
                                   "the start marker first")
    return text[:head_end], text[head_end:tail_start], text[tail_start:]


def current_table(text: str, path: str = "README.md") -> str:
    """The text between the markers (without the marker lines)."""
    return _split(text, path)[1]


def updated(text: str, path: str = "README.md") -> str:
    """``text`` with the generated table between its markers."""
    head, _, tail = _split(text, path)
    return head + render_markdown() + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ostracon.cluster.config_reference",
                                     description="Print the configuration reference generated from the schema, "
                                                 "or write/check it between a markdown file's markers.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="README", help="replace the table between the markers in this file")
    group.add_argument("--check", metavar="README", help="exit 1 if the table between the markers differs")
    args = parser.parse_args(argv)
    try:
        if args.write:
            with open(args.write, encoding="utf-8") as fh:
                text = fh.read()
            new = updated(text, args.write)
            if new != text:
                with open(args.write, "w", encoding="utf-8") as fh:
                    fh.write(new)
                print(f"{args.write}: configuration reference updated")
            else:
                print(f"{args.write}: configuration reference already up to date")
            return 0
        if args.check:
            with open(args.check, encoding="utf-8") as fh:
                text = fh.read()
            have, want = current_table(text, args.check), render_markdown()
            if have == want:
                print(f"{args.check}: configuration reference up to date")
                return 0
            diff = difflib.unified_diff(have.splitlines(keepends=True), want.splitlines(keepends=True),
                                        fromfile=f"{args.check} (configuration table)",
                                        tofile="generated from cluster/config/schema.py + cluster/config/docs.py")
            sys.stdout.writelines(diff)
            print(f"{args.check}: the configuration reference is out of date; run: {COMMAND}", file=sys.stderr)
            return 1
        sys.stdout.write(render_markdown())
        return 0
    except (OSError, ConfigReferenceError) as exc:
        print(f"config_reference: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["DOCS", "END_MARKER", "Key", "ConfigReferenceError", "START_MARKER", "current_table",
           "free_tables", "iter_keys", "leaf_keys", "main", "missing_docs", "render_markdown", "stale_docs",
           "table_keys", "toml_value", "type_name", "updated"]

if __name__ == "__main__":
    sys.exit(main())
