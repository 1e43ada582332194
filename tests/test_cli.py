"""The ``ostracon`` command line: train -> unlearn -> verify on a user npz dataset."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ostracon.cluster.cli import main
from ostracon.nodes.data import load_dataset

CONFIG = """
seed = 3
[data]
source = "npz"
path = "{path}"
partition = "iid"
[model]
name = "mlp"
params = {{ hidden = 32 }}
[training]
workers = 4
f = 1
rounds = 16
lr = 0.5
eval_every = 8
[byzantine]
count = 1
behaviour = "sign_flip"
[unlearning]
groups = 2
slices = 4
"""


@pytest.fixture
def npz_dataset(tmp_path):
    digits = load_dataset("digits")
    ids = np.array([f"patient-{i:04d}" for i in range(len(digits))])
    path = tmp_path / "records.npz"
    np.savez(path, X=digits.features, y=digits.labels, ids=ids)
    return path, digits, ids


def write_config(tmp_path, data_path, name="run.toml"):
    config = tmp_path / name
    config.write_text(CONFIG.format(path=data_path))
    return config


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "ostracon.cluster.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ostracon ")
    out = subprocess.run([sys.executable, "-m", "ostracon.cluster.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("train", "unlearn", "verify", "bench", "demo"):
        assert command in out.stdout


def test_train_unlearn_verify_matches_retraining_on_the_reduced_file(tmp_path, npz_dataset, capsys):
    path, digits, ids = npz_dataset
    config = write_config(tmp_path, path)
    state = tmp_path / "state"
    # The console script, as a user runs it.
    done = subprocess.run(["ostracon", "train", "-c", str(config), "-o", str(state), "--no-progress"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "honest test accuracy" in done.stdout
    from ostracon.cluster.config import load
    from ostracon.cluster.execution.plan import make_plan
    from ostracon.cluster.unlearning import locate

    train_ids = sorted(locate(make_plan(load(config))))
    rng = np.random.default_rng(0)
    deleted = [train_ids[i] for i in rng.choice(len(train_ids), size=4, replace=False)]
    ids_file = tmp_path / "forget.txt"
    ids_file.write_text("\n".join(deleted[2:]) + "\n")
    cert_path = tmp_path / "cert.json"
    assert main(["unlearn", "--state-dir", str(state), "--ids", ",".join(deleted[:2]), "--out", str(cert_path)]) == 0
    first = json.loads(cert_path.read_text())
    assert main(["unlearn", "--state-dir", str(state), "--ids-file", str(ids_file), "--out", str(cert_path)]) == 0
    cert = json.loads(cert_path.read_text())
    assert first["deleted"] == deleted[:2] and cert["deleted"] == deleted[2:]
    assert "deleted 2 id(s)" in capsys.readouterr().out
    # Train from scratch on a copy of the file without those rows.
    keep = ~np.isin(ids, deleted)
    reduced = tmp_path / "reduced.npz"
    np.savez(reduced, X=digits.features[keep], y=digits.labels[keep], ids=ids[keep])
    fresh = tmp_path / "fresh"
    assert main(["train", "-c", str(write_config(tmp_path, reduced, "fresh.toml")), "-o", str(fresh),
                 "--no-progress"]) == 0
    summary = json.loads((fresh / "summary.json").read_text())
    assert cert["group_digests"] == summary["group_digests"]
    assert cert["worker_digests"] == summary["worker_digests"]
    assert main(["verify", "--state-dir", str(state)]) == 0
    assert "verified" in capsys.readouterr().out


def test_bad_config_is_refused_before_anything_starts(tmp_path, npz_dataset, capsys):
    path, _, _ = npz_dataset
    config = tmp_path / "bad.toml"
    config.write_text(CONFIG.format(path=path) + "\n[extra]\nx = 1\n")
    assert main(["train", "-c", str(config), "-o", str(tmp_path / "out")]) == 2
    assert "extra" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    config.write_text(CONFIG.format(path=tmp_path / "missing.npz"))
    assert main(["train", "-c", str(config), "-o", str(tmp_path / "out")]) == 2
    assert "missing.npz" in capsys.readouterr().err
    config.write_text(CONFIG.format(path=path))
    assert main(["train", "-c", str(config), "-o", str(tmp_path / "out"), "--set", "training.f=2"]) == 2
    assert "training.f" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unlearn_errors_are_reported_and_change_nothing(tmp_path, npz_dataset, capsys):
    path, _, _ = npz_dataset
    state = tmp_path / "state"
    assert main(["train", "-c", str(write_config(tmp_path, path)), "-o", str(state), "--no-progress"]) == 0
    before = (state / "state.json").read_bytes()
    assert main(["unlearn", "--state-dir", str(state), "--ids", "patient-9999,nobody"]) == 2
    err = capsys.readouterr().err
    assert "patient-9999" in err and "nobody" in err
    assert (state / "state.json").read_bytes() == before
    assert main(["unlearn", "--state-dir", str(tmp_path / "nowhere"), "--ids", "x"]) == 2
    assert "not a trained state directory" in capsys.readouterr().err
