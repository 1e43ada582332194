"""The parquet source: a file, a directory and an S3 prefix (a real S3 API: moto's server on 127.0.0.1),
the same samples as the embedded digits giving the same models, and every malformed input refused with
one line naming the file and the column before anything is written."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ostracon.cluster.errors import ConfigError, DataError
from ostracon.cluster.execution.plan import load_config_dataset
from ostracon.cluster.execution.training import train
from ostracon.cluster.unlearning import unlearn_state_dir, verify_state_dir
from ostracon.nodes.data import load_dataset

from helpers import assert_consistent, retrain_digests, small_config, trainer_ids

TRAINING = {"workers": 4, "f": 1, "rounds": 8, "eval_every": 8}


def digits_table(rows: slice = slice(None), *, flat: bool = False) -> pa.Table:
    """The embedded digits as a parquet table: same ids, labels and features."""
    d = load_dataset("digits")
    ids, x, y = d.ids[rows], d.features[rows], d.labels[rows]
    values = pa.array(x.reshape(-1).astype(np.float32))
    features = (pa.ListArray.from_arrays(pa.array(np.arange(0, x.size + 1, 64, dtype=np.int32)), values) if flat
                else pa.FixedSizeListArray.from_arrays(values, 64))
    return pa.table({"id": pa.array(ids.tolist()), "label": pa.array(y), "features": features,
                     "extra": pa.array(["ignored"] * len(ids))})


def parquet_config(path, **data):
    return small_config(data={"source": "parquet", "path": str(path), **data}, training=TRAINING,
                        byzantine={"count": 1, "behaviour": "sign_flip"})


def digits_config():
    return small_config(training=TRAINING, byzantine={"count": 1, "behaviour": "sign_flip"})


def test_a_parquet_file_and_a_directory_train_exactly_as_the_embedded_digits(tmp_path):
    pq.write_table(digits_table(), tmp_path / "digits.parquet")
    parts = tmp_path / "parts"
    parts.mkdir()
    bounds = [0, 600, 1200, None]
    for k in range(3):
        pq.write_table(digits_table(slice(bounds[k], bounds[k + 1]), flat=k == 1), parts / f"part-{k}.parquet")
    (parts / "README.txt").write_text("not a parquet file: skipped")
    expected = train(digits_config(), progress=False).summary["group_digests"]
    assert train(parquet_config(tmp_path / "digits.parquet"), progress=False).summary["group_digests"] == expected
    assert train(parquet_config(parts), progress=False).summary["group_digests"] == expected


def test_shape_reshapes_each_row(tmp_path):
    pq.write_table(digits_table(), tmp_path / "d.parquet")
    dataset = load_config_dataset(parquet_config(tmp_path / "d.parquet", shape=[1, 8, 8]))
    assert dataset.feature_shape == (1, 8, 8)
    flat = load_dataset("digits")
    assert np.array_equal(dataset.features.reshape(len(dataset), -1), flat.features)


# ----- refused inputs: one line naming the file and the column, nothing written ---------------------------------

def _write(path, table):
    pq.write_table(table, path)
    return path


def _table(**columns):
    base = {"id": pa.array(["a", "b", "c"]), "label": pa.array([0, 1, 1]),
            "features": pa.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])}
    base.update(columns)
    return pa.table({k: v for k, v in base.items() if v is not None})


@pytest.mark.parametrize("columns,words", [
    ({"label": None}, "missing column(s) 'label'"),
    ({"id": pa.array(["a", "b", "a"])}, "column 'id' has duplicates: 'a'"),
    ({"id": pa.array([1.5, 2.5, 3.5])}, "column 'id' must hold strings or integers"),
    ({"label": pa.array([0.0, 1.0, 1.0])}, "column 'label' must hold integers"),
    ({"label": pa.array([0, -1, 1])}, "column 'label' has negative labels"),
    ({"features": pa.array([[0.0, 1.0], [1.0], [0.5, 0.5]])}, "column 'features': row 1 has 1 values"),
    ({"features": pa.array(["x", "y", "z"])}, "column 'features' must hold a list of numbers per row"),
    ({"features": pa.array([[0.0, float("nan")], [1.0, 0.0], [0.5, 0.5]])}, "column 'features' contains NaN"),
])
def test_malformed_files_are_named_with_their_column(tmp_path, columns, words):
    path = _write(tmp_path / "bad.parquet", _table(**columns))
    with pytest.raises(DataError) as info:
        load_config_dataset(parquet_config(path))
    message = str(info.value)
    assert words in message and "bad.parquet" in message and "\n" not in message


def test_an_id_in_two_files_names_both(tmp_path):
    _write(tmp_path / "a.parquet", _table())
    _write(tmp_path / "b.parquet", _table(id=pa.array(["x", "c", "y"])))
    with pytest.raises(DataError, match=r"b\.parquet: column 'id': id 'c' is also in .*a\.parquet"):
        load_config_dataset(parquet_config(tmp_path))


def test_shape_must_match_every_row_and_applies_to_parquet_only(tmp_path):
    path = _write(tmp_path / "d.parquet", _table())
    with pytest.raises(DataError, match=r"row 0 has 2 values; data.shape = \[3\] needs 3"):
        load_config_dataset(parquet_config(path, shape=[3]))
    with pytest.raises(ConfigError, match="data.shape: each entry must be a positive integer"):
        parquet_config(path, shape=[0])
    with pytest.raises(ConfigError, match="data.shape: applies to data.source = \"parquet\" only"):
        small_config(data={"shape": [2]})
    with pytest.raises(ConfigError, match="data.path: required when data.source = \"parquet\""):
        small_config(data={"source": "parquet"})


def test_not_parquet_and_nothing_there_are_refused(tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="junk.parquet: not a readable parquet file"):
        load_config_dataset(parquet_config(junk))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .parquet file under"):
        load_config_dataset(parquet_config(tmp_path / "empty"))
    with pytest.raises(DataError, match="nothing at"):
        load_config_dataset(parquet_config(tmp_path / "missing"))


def test_ostracon_train_refuses_a_bad_file_before_creating_the_state_dir(tmp_path):
    path = _write(tmp_path / "bad.parquet", _table(label=None))
    config = tmp_path / "c.toml"
    config.write_text(f'[data]\nsource = "parquet"\npath = "{path}"\n[training]\nworkers = 4\nf = 1\nrounds = 4\n')
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "ostracon.cluster.cli", "train", "-c", str(config), "-o", str(out),
                          "--backend", "local", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "bad.parquet" in run.stderr and "'label'" in run.stderr
    assert not out.exists()


# ----- object storage: a real S3 API on 127.0.0.1 -----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 and the standard AWS variables pointing at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def test_an_s3_prefix_trains_deletes_and_verifies(tmp_path, s3):
    import boto3

    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket="silo")
    for k, rows in enumerate([slice(0, 900), slice(900, None)]):
        local = tmp_path / f"part-{k}.parquet"
        pq.write_table(digits_table(rows), local)
        client.upload_file(str(local), "silo", f"digits/part-{k}.parquet")
    config = parquet_config("s3://silo/digits").replace(**{"unlearning.slices": 2})
    assert config.data.path == "s3://silo/digits"  # a URI is kept as given, not made a local path
    expected = train(small_config(training=TRAINING, byzantine={"count": 1, "behaviour": "sign_flip"},
                                  unlearning={"slices": 2}), progress=False).summary["group_digests"]
    state = tmp_path / "state"
    assert train(config, state, progress=False).summary["group_digests"] == expected
    victims = trainer_ids(config, 2, seed=3, groups=(0,))
    digests = retrain_digests(config, victims)
    unlearn_state_dir(state, victims)
    assert_consistent(state, config, victims, digests)
    report = verify_state_dir(state)
    assert report["ok"], report["failures"]
