"""Cross-silo data (``data.per_worker``): each data-holding worker owns one file and reads only it; its
rows are its own (held-out rows and slices by hash inside it)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ostracon.cluster.config import from_dict
from ostracon.cluster.errors import ConfigError, DataError
from ostracon.cluster.execution.backend import LocalBackend
from ostracon.cluster.execution.plan import make_plan
from ostracon.cluster.execution.training import PER_WORKER_TEST, train
from ostracon.cluster.unlearning import unlearn_state_dir, verify_state_dir
from ostracon.nodes.data import load_dataset
from ostracon.nodes.shard_store import ShardStore

from helpers import SISA, small_config

WORKERS = 8  # SISA: 2 groups x 4 workers, every worker holds data


def write_silos(root, fmt="npz"):
    """Digits dealt round-robin to 8 files (silo j holds rows i with i % 8 == j), ids named by silo."""
    digits = load_dataset("digits")
    x = np.rint(digits.features * 16).astype(np.uint8)
    files = {}
    for j in range(WORKERS):
        rows = np.arange(j, len(digits), WORKERS)
        ids = np.array([f"silo{j}-{i}" for i in rows])
        path = root / f"worker-{j}.{fmt}"
        if fmt == "npz":
            np.savez(path, X=x[rows], y=digits.labels[rows], ids=ids)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            flat = pa.FixedSizeListArray.from_arrays(pa.array(x[rows].reshape(-1)), 64)
            pq.write_table(pa.table({"id": ids, "label": digits.labels[rows], "features": flat}), path)
        files[j] = (path, set(ids.tolist()))
    return files


def silo_config(root, fmt="npz", **data):
    return small_config(data={"source": fmt, "per_worker": str(root / f"worker-{{worker}}.{fmt}"), "partition": "iid",
                              **data}, **SISA)


@pytest.mark.parametrize("fmt", ["npz", "parquet"])
def test_each_worker_trains_on_its_own_file_and_deletion_is_exact(tmp_path, fmt):
    files = write_silos(tmp_path, fmt)
    config = silo_config(tmp_path, fmt)
    state = tmp_path / "state"
    result = train(config, state, progress=False)
    plan = make_plan(config)
    for j, (_, ids) in files.items():
        held = set(ShardStore.open(state / "stores" / f"worker-{j}").ids.tolist())
        assert held and held <= ids  # its own rows only...
        assert held == ids - set(plan.test_ids.tolist())  # ...all of them but the held-out ones
        assert all(plan.placement[i][1] == j for i in held)
    assert result.summary["ensemble_test_accuracy"] is None and result.summary["note"] == PER_WORKER_TEST
    assert result.summary["honest_test_accuracy"]["mean"] > 0.3  # each on its own file's held-out rows
    victim = sorted(files[2][1] - set(plan.test_ids.tolist()))[0]
    unlearn_state_dir(state, [victim])
    report = verify_state_dir(state)
    assert report["ok"], report["failures"]
    assert victim not in set(ShardStore.open(state / "stores" / "worker-2").ids.tolist())


def test_a_worker_opens_only_its_own_file(tmp_path):
    files = write_silos(tmp_path)
    plan = make_plan(silo_config(tmp_path))  # the coordinator reads the ids and labels of every file
    away = tmp_path / "elsewhere"
    away.mkdir()
    for j, (path, _) in files.items():
        if j != 3:
            shutil.move(path, away / path.name)  # nothing but worker 3's file is left to open
    with LocalBackend() as backend:
        backend.start([plan.specs[3]], plan.shards)
        worker = backend.workers[3]
        assert set(worker.store.ids.tolist()) == files[3][1] - set(plan.test_ids.tolist())
        accuracy, _ = worker.evaluate_held_out()  # on its own file's held-out rows
        assert 0.0 <= accuracy <= 1.0
    with LocalBackend() as backend, pytest.raises(DataError, match=r"worker 4 reading its rows .*worker-4\.npz"):
        backend.start([plan.specs[4]], plan.shards)


def test_cross_silo_config_errors_name_the_key_or_file(tmp_path):
    write_silos(tmp_path)
    base = {"seed": 0, "training": {"workers": 4, "f": 1}, "byzantine": {"count": 1, "behaviour": "alie"},
            "unlearning": {"groups": 2}}
    bad = [({"source": "npz", "per_worker": str(tmp_path / "w.npz")}, r"data\.per_worker.*\{worker\}"),
           ({"source": "npz", "per_worker": str(tmp_path / "worker-{worker}.npz"), "path": "x.npz"},
            "data.path and data.per_worker"),
           ({"source": "digits", "per_worker": "w-{worker}.npz"}, "applies to data.source"),
           ({"source": "npz", "per_worker": str(tmp_path / "worker-{worker}.npz"), "partition": "dirichlet"},
            "each worker's file is its partition")]
    for data, message in bad:
        with pytest.raises(ConfigError, match=message):
            from_dict({**base, "data": data})
    (tmp_path / "worker-5.npz").unlink()
    with pytest.raises(DataError, match=r"worker-5\.npz"):
        make_plan(silo_config(tmp_path))
