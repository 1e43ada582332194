"""The README's configuration table is generated from the schema, and every key has a meaning."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest

from ostracon.cluster.config import SECTIONS, Config
from ostracon.cluster.config import reference as ref
from ostracon.cluster.config.docs import DOCS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
REGENERATE = "python -m ostracon.cluster.config_reference --write README.md"


def test_every_schema_key_has_a_meaning():
    missing = ref.missing_docs()
    assert not missing, (f"config key(s) without a meaning: {', '.join(missing)}; add them to DOCS in "
                         "cluster/config/docs.py (or field(metadata={'doc': ...})), then run: " + REGENERATE)


def test_docs_name_only_keys_of_the_schema():
    stale = ref.stale_docs()
    assert not stale, (f"DOCS in cluster/config/docs.py documents key(s) the schema does not have: "
                       f"{', '.join(stale)}; remove or rename them, then run: {REGENERATE}")


def test_readme_table_is_the_generated_one():
    text = README.read_text(encoding="utf-8")
    assert ref.current_table(text) == ref.render_markdown(), (
        f"README.md's configuration table differs from the schema and cluster/config/docs.py; run: {REGENERATE}")


def test_walker_covers_every_section_and_top_level_key():
    keys = ref.leaf_keys()
    assert len(keys) == len(set(keys))
    top = [f.name for f in dataclasses.fields(Config) if f.name not in SECTIONS]
    assert top and all(name in keys for name in top)
    assert set(SECTIONS) <= set(ref.table_keys())
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert any(k == f"{section}.{f.name}" or k.startswith(f"{section}.{f.name}.") for k in keys), f.name


def _normalised(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalised(v) for v in value]
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _normalised(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("key", ref.iter_keys(), ids=lambda k: k.key)
def test_rendered_default_round_trips(key):
    parsed = tomllib.loads(f"v = {key.toml_default}")["v"]
    assert type(parsed) is type(_normalised(key.default)), (key.key, key.toml_default)
    assert _normalised(parsed) == _normalised(key.default), (key.key, key.toml_default)
    assert ref.type_name(parsed) == key.type


@dataclasses.dataclass(frozen=True)
class _Gate:
    max_test_drop: float = 0.02
    enabled: bool = True


@dataclasses.dataclass(frozen=True)
class _Unlearning:
    groups: int = 1
    gate: _Gate = dataclasses.field(default_factory=_Gate)
    steps: tuple = ("nnm", ("bucketing", {"bucket_size": 2}))
    extra: dict = dataclasses.field(default_factory=lambda: {"a b": "x\"y", "n": [1, 2.5]},
                                    metadata={"doc": "from the field"})


def test_walker_recurses_into_nested_dataclasses_with_dotted_names():
    rows = {k.key: k for k in ref.iter_keys(_Unlearning, "unlearning.")}
    assert list(rows) == ["unlearning.groups", "unlearning.gate.max_test_drop", "unlearning.gate.enabled",
                          "unlearning.steps", "unlearning.extra"]
    assert ref.table_keys(_Unlearning(), "unlearning.") == ["unlearning.gate"]
    assert rows["unlearning.gate.max_test_drop"].type == "float"
    assert rows["unlearning.gate.enabled"].toml_default == "true"
    assert rows["unlearning.extra"].doc == "from the field" and rows["unlearning.groups"].doc == DOCS.get(
        "unlearning.groups")
    assert rows["unlearning.gate.enabled"].doc is None  # neither DOCS nor metadata: render_markdown refuses
    for row in rows.values():  # nested lists and inline tables, quoted keys and escapes round-trip too
        parsed = tomllib.loads(f"v = {row.toml_default}")["v"]
        assert _normalised(parsed) == _normalised(row.default), row.toml_default


def test_render_refuses_a_key_without_meaning(monkeypatch):
    monkeypatch.delitem(DOCS, "training.lr")
    assert ref.missing_docs() == ["training.lr"]
    with pytest.raises(ref.ConfigReferenceError, match=r"training\.lr"):
        ref.render_markdown()


def test_cli_check_and_write(tmp_path, capsys):
    path = tmp_path / "README.md"
    path.write_text(f"# t\n\nprose\n\n{ref.START_MARKER}\n| old |\n{ref.END_MARKER}\n\nafter\n", encoding="utf-8")
    assert ref.main(["--check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "-| old |" in out and "+| key | type | default | meaning |" in out and REGENERATE.split(" --")[0] in err
    assert ref.main(["--write", str(path)]) == 0
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# t\n\nprose\n\n") and text.endswith(f"{ref.END_MARKER}\n\nafter\n")
    assert ref.current_table(text) == ref.render_markdown()
    assert ref.main(["--check", str(path)]) == 0
    path.write_text("no markers\n", encoding="utf-8")
    assert ref.main(["--check", str(path)]) == 2
    assert "config-reference:start" in capsys.readouterr().err
