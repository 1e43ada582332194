"""What a new user of the command line runs into: output paths, odd ids, relative paths (the demo: test_demo.py)."""

from __future__ import annotations

import json

import numpy as np

from ostracon.cluster.cli import main
from ostracon.nodes.data import load_dataset

CONFIG = """
seed = 2
[data]
source = "npz"
path = "{path}"
[model]
name = "mlp"
params = {{ hidden = 16 }}
[training]
workers = 3
f = 0
rounds = 6
eval_every = 3
[unlearning]
groups = 2
slices = 2
"""


def _npz(path, ids=None):
    digits = load_dataset("digits")
    ids = np.array([f"r{i}" for i in range(len(digits))]) if ids is None else ids
    np.savez(path, X=digits.features, y=digits.labels, ids=ids)
    return path


def _train(tmp_path, data_path, name="state"):
    config = tmp_path / f"{name}.toml"
    config.write_text(CONFIG.format(path=data_path))
    state = tmp_path / name
    assert main(["train", "-c", str(config), "-o", str(state), "--no-progress"]) == 0
    return state


def _training_ids(state) -> list[str]:
    from ostracon.cluster.config import load
    from ostracon.cluster.execution.plan import make_plan
    from ostracon.cluster.unlearning import locate

    return sorted(locate(make_plan(load(state / "config.json"))))


def test_unlearn_out_into_a_missing_folder_creates_it_and_writes_the_certificate(tmp_path, capsys):
    state = _train(tmp_path, _npz(tmp_path / "digits.npz"))
    victim = _training_ids(state)[0]
    out = tmp_path / "reports" / "2026" / "cert.json"
    assert main(["unlearn", "--state-dir", str(state), "--ids", victim, "--out", str(out)]) == 0
    cert = json.loads(out.read_text())
    assert cert["deleted"] == [victim] and cert["model_version_after"] == 2
    assert json.loads((state / "state.json").read_text())["model_version"] == 2


def test_ids_with_surrounding_spaces_and_commas_can_be_deleted(tmp_path, capsys):
    ids = np.array([f"r{i}" for i in range(len(load_dataset("digits")))], dtype=object)
    ids[:40] = [f" padded {i} " for i in range(20)] + [f"a,b{i}" for i in range(20)]
    state = _train(tmp_path, _npz(tmp_path / "odd.npz", ids=ids.astype(str)))
    trained = _training_ids(state)
    padded = [i for i in trained if i.startswith(" ")][:2]
    with_comma = [i for i in trained if "," in i][:1]
    assert len(padded) == 2 and with_comma
    # --ids-file: one id per line, verbatim (the spaces are part of the id), CRLF line endings accepted.
    ids_file = tmp_path / "forget.txt"
    ids_file.write_bytes(f"{padded[0]}\r\n\n".encode())
    assert main(["unlearn", "--state-dir", str(state), "--ids-file", str(ids_file)]) == 0
    # --ids-json: any string.
    assert main(["unlearn", "--state-dir", str(state), "--ids-json", json.dumps([padded[1], *with_comma])]) == 0
    certs = sorted((state / "certificates").glob("deletion-*.json"))
    deleted = [json.loads(c.read_text())["deleted"] for c in certs]
    assert deleted == [[padded[0]], [padded[1], *with_comma]]
    # --ids strips the spaces: documented, and the stripped id is unknown.
    assert main(["unlearn", "--state-dir", str(state), "--ids", padded[0]]) == 2
    assert padded[0].strip() in capsys.readouterr().err


def test_relative_data_path_is_stored_absolute_so_unlearn_and_verify_work_elsewhere(tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    _npz(project / "data" / "digits.npz")
    monkeypatch.chdir(project)
    state = _train(project, "data/digits.npz")
    stored = json.loads((state / "config.json").read_text())["data"]["path"]
    assert stored == str(project / "data" / "digits.npz")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["unlearn", "--state-dir", str(state), "--ids", _training_ids(state)[3]]) == 0
    assert main(["verify", "--state-dir", str(state)]) == 0
    assert "verified" in capsys.readouterr().out


def test_many_groups_over_little_data_warn_naming_the_counts(caplog):
    import logging

    from ostracon.cluster.execution.plan import validate_run

    from helpers import small_config

    caplog.set_level(logging.WARNING, logger="ostracon")
    validate_run(small_config(unlearning={"groups": 60}))  # 360 workers share ~1440 training rows
    [warning] = [r.getMessage() for r in caplog.records if "per worker" in r.getMessage()]
    assert "360 workers" in warning and "unlearning.groups = 60" in warning and "training.batch_size = 32" in warning
    caplog.clear()
    validate_run(small_config())  # 6 workers: a few hundred rows each, no warning
    assert not [r for r in caplog.records if "per worker" in r.getMessage()]
