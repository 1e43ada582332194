"""Parquet read by parts (nodes/parquet.py): the index (ids, labels) once, then only the rows a worker
wants, streamed by record batch; row for row what the whole-file reader gives. Errors name the file and
the column and are found in wanted rows only. End to end: Ray workers reading their own rows from an
S3 prefix (moto's server on 127.0.0.1), bit-identical to the local backend, and a shard that travels
as a few hundred bytes, never rows."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import socket

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ostracon.cluster.errors import DataError
from ostracon.cluster.execution.plan import make_plan
from ostracon.cluster.execution.training import train
from ostracon.cluster.unlearning import unlearn_state_dir, verify_state_dir
from ostracon.nodes.data import load_dataset
from ostracon.nodes.parquet import read_parquet, read_parquet_features, read_parquet_index
from ostracon.nodes.sources import NO_HOLDER, ShardSource, read_index, read_shard

from helpers import assert_consistent, retrain_digests, small_config, trainer_ids

# Four files of the digits (1797 rows): different row-group sizes and list types, one of 20 rows.
BOUNDS = (0, 500, 520, 1300, 1797)
ROW_GROUPS = (97, 7, 1000, 50)
LIST_TYPES = ("list", "fixed", "list", "large")


def digits_pixels() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The digits as integer pixel counts 0..16 (uint8), string ids, labels."""
    d = load_dataset("digits")
    return np.array([f"img-{i:04d}" for i in range(len(d))]), np.rint(d.features * 16).astype(np.uint8), d.labels


def features_array(x: np.ndarray, kind: str, value_type: pa.DataType) -> pa.Array:
    width = int(np.prod(x.shape[1:]))
    values = pa.array(x.reshape(-1), type=value_type)
    if kind == "fixed":
        return pa.FixedSizeListArray.from_arrays(values, width)
    offsets = np.arange(0, x.shape[0] * width + 1, width)
    if kind == "large":
        return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def write_parts(root, value_type: pa.DataType | None = None, *, ids=None, x=None, y=None) -> None:
    """The digits under ``root`` as ``part-k.parquet`` (BOUNDS, ROW_GROUPS, LIST_TYPES), plus a non-parquet file."""
    d_ids, d_x, d_y = digits_pixels()
    value_type = value_type or pa.uint8()
    ids, x, y = (d_ids if ids is None else ids), (d_x if x is None else x), (d_y if y is None else y)
    os.makedirs(root, exist_ok=True)
    for k in range(len(BOUNDS) - 1):
        rows = slice(BOUNDS[k], BOUNDS[k + 1])
        table = pa.table({"label": pa.array(y[rows]), "id": pa.array(ids[rows].tolist()),
                          "features": features_array(x[rows], LIST_TYPES[k], value_type),
                          "note": pa.array(["never read"] * (BOUNDS[k + 1] - BOUNDS[k]))})
        pq.write_table(table, os.path.join(root, f"part-{k}.parquet"), row_group_size=ROW_GROUPS[k])
    with open(os.path.join(root, "_SUCCESS"), "w") as fh:
        fh.write("")


POSITIONS = {
    "every row": np.arange(1797),
    "first and last": np.array([0, 1796]),
    "each file's edges and batch borders": np.array([0, 4, 5, 6, 7, 96, 97, 98, 499, 500, 506, 507, 519, 520,
                                                      1299, 1300, 1349, 1350, 1796]),
    "none from files 1 and 2": np.array([3, 250, 499, 1300, 1301, 1500, 1796]),
    "only the small file": np.arange(500, 520),
    "a random third": np.sort(np.random.default_rng(7).choice(1797, 600, replace=False)),
}


@pytest.fixture(scope="module")
def uint8_parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts") / "uint8"
    write_parts(root)
    return root


@pytest.mark.parametrize("batch_rows", [5, 64, 8192])
@pytest.mark.parametrize("which", sorted(POSITIONS))
def test_rows_read_by_parts_are_the_whole_readers_rows(uint8_parts, which, batch_rows):
    ids, x, labels, num_classes = read_parquet(uint8_parts)
    index = read_parquet_index(uint8_parts)
    assert np.array_equal(index[0], ids) and np.array_equal(index[1], labels)
    assert index[2:] == (num_classes, (64,), np.dtype(np.uint8))
    positions = POSITIONS[which]
    got = read_parquet_features(uint8_parts, (), positions, batch_rows=batch_rows)
    assert got.dtype == np.uint8 and got.shape == (len(positions), 64)
    assert np.array_equal(got.astype(np.float32), x[positions])  # the whole reader gives float32


def test_the_index_and_rows_are_the_source_rows(uint8_parts):
    ids, x, labels = digits_pixels()
    index = read_parquet_index(uint8_parts)
    assert np.array_equal(index[0], ids) and np.array_equal(index[1], labels)
    assert np.array_equal(read_parquet_features(uint8_parts, (), np.arange(1797), batch_rows=11), x)


def test_float64_lists_become_float32_and_shape_reshapes(tmp_path):
    _, x, _ = digits_pixels()
    values = x.astype(np.float64) / 16.0
    write_parts(tmp_path, pa.float64(), x=values)
    whole = read_parquet(tmp_path)[1]
    index = read_parquet_index(tmp_path)
    assert index[3:] == ((64,), np.dtype(np.float32))
    positions = POSITIONS["each file's edges and batch borders"]
    got = read_parquet_features(tmp_path, (), positions, batch_rows=5)
    assert got.dtype == np.float32 and np.array_equal(got, whole[positions])
    assert np.array_equal(got, values[positions].astype(np.float32))
    # data.shape: (1, 8, 8) per row, for the index and for the rows alike
    assert read_parquet_index(tmp_path, (1, 8, 8))[3:] == ((1, 8, 8), np.dtype(np.float32))
    shaped = read_parquet_features(tmp_path, (1, 8, 8), positions, batch_rows=5)
    assert shaped.shape == (len(positions), 1, 8, 8)
    assert np.array_equal(shaped, read_parquet(tmp_path, (1, 8, 8))[1][positions])
    assert np.array_equal(shaped.reshape(len(positions), 64), got)


def test_integer_shape_is_kept_and_no_rows_have_the_indexs_shape_and_dtype(uint8_parts):
    got = read_parquet_features(uint8_parts, (8, 8), np.array([1, 600, 1796]), batch_rows=3)
    assert got.dtype == np.uint8 and got.shape == (3, 8, 8)
    assert np.array_equal(got.reshape(3, 64), digits_pixels()[1][[1, 600, 1796]])
    none = read_parquet_features(uint8_parts, (), np.zeros(0, dtype=np.int64))
    assert none.shape == (0, 64) and none.dtype == np.uint8  # what the index says, not (0, 0) float32
    assert read_parquet_features(uint8_parts, (1, 8, 8), np.zeros(0, dtype=np.int64)).shape == (0, 1, 8, 8)


@pytest.mark.parametrize("second", [pa.float64(), pa.int16()])
def test_files_of_different_value_types_give_float32_whichever_files_a_worker_reads(tmp_path, second):
    """One file of uint8 lists, the others of ``second``: the index says float32, and so do the rows, even
    those read from the uint8 file alone."""
    ids, x, labels = digits_pixels()
    write_parts(tmp_path, second)
    table = pq.read_table(tmp_path / "part-0.parquet")
    pq.write_table(table.set_column(table.schema.get_field_index("features"), "features",
                                    features_array(x[:500], "list", pa.uint8())), tmp_path / "part-0.parquet")
    assert read_parquet_index(tmp_path)[4] == np.dtype(np.float32)
    for positions in (np.array([0, 10, 499]), np.array([10, 1000]), np.array([1000, 1796])):
        got = read_parquet_features(tmp_path, (), positions, batch_rows=7)
        assert got.dtype == np.float32 and np.array_equal(got, x[positions].astype(np.float32))


def test_every_workers_rows_are_the_whole_readers_rows_by_id(uint8_parts):
    """Through the sources layer, as workers read: each shard's rows equal the whole reader's rows of its ids."""
    config = small_config(data={"source": "parquet", "path": str(uint8_parts)}, training={"workers": 4, "f": 1},
                          byzantine={"count": 1, "behaviour": "alie"}, unlearning={"groups": 2, "slices": 3})
    ids, x, labels, _ = read_parquet(uint8_parts)
    at = {i: k for k, i in enumerate(ids.tolist())}
    plan = make_plan(config)
    index = read_index(plan.source)
    seen = []
    for j in sorted(plan.shards):
        rows = read_shard(plan.shards[j], index)
        if plan.shards[j].holder == NO_HOLDER:
            assert len(rows.ids) == 0 and rows.features.shape == (0, 64)
            continue
        where = np.array([at[i] for i in rows.ids.tolist()], dtype=np.int64)
        assert rows.features.dtype == np.uint8 and np.array_equal(rows.features.astype(np.float32), x[where])
        assert np.array_equal(rows.labels, labels[where])
        seen += rows.ids.tolist()
    assert sorted(seen + plan.test_ids.tolist()) == sorted(ids.tolist())


# ----- errors: name the file and the column; found in wanted rows only ------------------------------------------

def _small(root, name: str, features: pa.Array, ids=None, labels=None, row_group_size=None) -> str:
    n = len(features)
    table = pa.table({"id": pa.array(ids if ids is not None else [f"{name}-{k}" for k in range(n)]),
                      "label": pa.array(labels if labels is not None else [k % 2 for k in range(n)]),
                      "features": features})
    path = os.path.join(root, f"{name}.parquet")
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _rows(width: int, count: int, bad: dict[int, list | None], value_type: pa.DataType | None = None) -> pa.Array:
    value_type = value_type or pa.float64()
    cast = float if pa.types.is_floating(value_type) else int
    rows: list[list | None] = [[cast(k + v) for v in range(width)] for k in range(count)]
    for k, row in bad.items():
        rows[k] = row
    return pa.array(rows, type=pa.list_(value_type))


BAD_ROWS = [
    ({6: [1, None, 3]}, "column 'features' has null values inside rows (row 6)", (pa.float64(), pa.uint8())),
    ({6: [1, 2]}, "column 'features': row 6 has 2 values; the first row (of ", (pa.float64(), pa.uint8())),
    ({6: None}, "column 'features' has 1 null row(s) (row 6)", (pa.float64(), pa.uint8())),
    ({6: [1.0, float("inf"), 3.0]}, "column 'features' contains NaN or Inf (row 6)", (pa.float64(),)),
    ({6: [1.0, float("nan"), 3.0]}, "column 'features' contains NaN or Inf (row 6)", (pa.float32(),)),
]


@pytest.mark.parametrize("bad,words,value_type", [(b, w, t) for b, w, types in BAD_ROWS for t in types])
def test_a_bad_row_is_an_error_naming_file_column_and_row_only_when_wanted(tmp_path, bad, words, value_type):
    _small(tmp_path, "a", _rows(3, 9, {}, value_type), row_group_size=4)
    path = _small(tmp_path, "b", _rows(3, 9, bad, value_type), row_group_size=4)
    read_parquet_index(tmp_path)  # the index reads no features but the first row's: not its business
    dtype = np.uint8 if value_type == pa.uint8() else np.float32
    for batch_rows in (2, 100):
        # position 15 (file b, row 6) wanted: refused, naming b.parquet, the column and b's row number
        with pytest.raises(ValueError) as info:
            read_parquet_features(tmp_path, (), np.array([0, 9, 14, 15, 17]), batch_rows=batch_rows)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and words in message and "\n" not in message, message
        # not wanted: no error, and the rows read are right
        fine = read_parquet_features(tmp_path, (), np.array([0, 8, 9, 14, 16, 17]), batch_rows=batch_rows)
        expected = np.array([[k + v for v in range(3)] for k in (0, 8, 0, 5, 7, 8)], dtype=dtype)
        assert fine.dtype == dtype and np.array_equal(fine, expected)
    with pytest.raises(ValueError, match=r"b\.parquet: column 'features'"):  # the whole reader reads every row
        read_parquet(tmp_path)


def test_a_wanted_row_whose_length_differs_from_the_first_files_is_refused(tmp_path):
    """Without data.shape the first row of the first file gives every row's length (as the index says),
    also for a worker whose rows all lie in another file."""
    _small(tmp_path, "a", _rows(3, 4, {}))
    path = _small(tmp_path, "b", _rows(2, 4, {}))
    assert read_parquet_index(tmp_path)[3] == (3,)
    words = r": column 'features': row 1 has 2 values; the first row \(of .*a\.parquet\) has 3$"
    with pytest.raises(ValueError, match=f"^{re.escape(path)}{words}"):
        read_parquet_features(tmp_path, (), np.array([5, 6]))
    with pytest.raises(ValueError, match=r"b\.parquet: column 'features': row 0 has 2 values; data.shape = \[3\]"):
        read_parquet_features(tmp_path, (3,), np.array([4]))
    assert read_parquet_features(tmp_path, (), np.array([0, 3])).shape == (2, 3)


def test_a_position_beyond_the_rows_is_refused(uint8_parts):
    with pytest.raises(ValueError, match=r"holds 1797 rows; row position 1797 is beyond them"):
        read_parquet_features(uint8_parts, (), np.array([3, 1797]))
    with pytest.raises(ValueError, match="row position -1 is negative"):
        read_parquet_features(uint8_parts, (), np.array([-1, 3]))


def test_an_unreadable_file_is_named_by_the_rows_reader(tmp_path):
    _small(tmp_path, "a", _rows(3, 4, {}))
    (tmp_path / "b.parquet").write_bytes(b"PAR1 not really PAR1")
    with pytest.raises(ValueError, match=r"b\.parquet: not a readable parquet file"):
        read_parquet_features(tmp_path, (), np.array([0]))


@pytest.mark.parametrize("second,words", [
    ({"label": None}, "missing column(s) 'label' (found: id, features)"),
    ({"features": None}, "missing column(s) 'features'"),
    ({"label": pa.array([0.0, 1.0, 1.0])}, "column 'label' must hold integers, got double"),
    ({"label": pa.array(["0", "1", "1"])}, "column 'label' must hold integers, got string"),
    ({"label": pa.array([0, None, 1])}, "column 'label' has 1 null value(s)"),
    ({"id": pa.array(["x", None, "y"])}, "column 'id' has 1 null value(s)"),
    ({"features": pa.array([["1", "2"], ["3", "4"], ["5", "6"]])},
     "column 'features' must hold numbers, got lists of string"),
])
def test_the_index_refuses_a_bad_second_file_naming_it(tmp_path, second, words):
    _small(tmp_path, "a", _rows(2, 3, {}))
    columns = {"id": pa.array(["x", "y", "z"]), "label": pa.array([0, 1, 1]),
               "features": pa.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])}
    columns.update(second)
    pq.write_table(pa.table({k: v for k, v in columns.items() if v is not None}), tmp_path / "b.parquet")
    with pytest.raises(ValueError) as info:
        read_parquet_index(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'b.parquet'}: ") and words in message and "\n" not in message, message


def test_the_index_refuses_an_id_in_two_files_naming_both(tmp_path):
    _small(tmp_path, "a", _rows(2, 3, {}), ids=["p", "q", "r"])
    _small(tmp_path, "b", _rows(2, 3, {}), ids=["s", "t", "u"])
    _small(tmp_path, "c", _rows(2, 3, {}), ids=["v", "q", "w"])
    with pytest.raises(ValueError, match=r"c\.parquet: column 'id': id 'q' is also in .*a\.parquet; ids must be "
                                         "unique over every file"):
        read_parquet_index(tmp_path)


def test_the_index_refuses_a_null_first_row_without_shape(tmp_path):
    """The first row gives every row's length: a null one is an error naming the file (it was a TypeError)."""
    path = _small(tmp_path, "a", _rows(2, 3, {0: None}))
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}: column 'features' has null row\(s\) \(row 0\)"):
        read_parquet_index(tmp_path)
    assert read_parquet_index(tmp_path, (2,))[3] == (2,)  # with data.shape the first row is not read
    with pytest.raises(ValueError, match=r"column 'features' has null row"):
        read_parquet_features(tmp_path, (), np.array([1]))


def test_a_workers_bad_row_is_one_error_naming_the_worker_file_and_column(tmp_path):
    write_parts(tmp_path)
    config = small_config(data={"source": "parquet", "path": str(tmp_path)}, training={"workers": 4, "f": 1},
                          byzantine={"count": 1, "behaviour": "alie"}, unlearning={"slices": 2})
    plan = make_plan(config)
    ids, x, labels = digits_pixels()
    victim = int(np.flatnonzero(ids == plan.shard_ids(2)[0])[0])
    k = int(np.searchsorted(BOUNDS, victim, side="right")) - 1
    rows = [row.tolist() for row in x[BOUNDS[k]:BOUNDS[k + 1]]]
    rows[victim - BOUNDS[k]] = rows[victim - BOUNDS[k]][:10]
    table = pq.read_table(tmp_path / f"part-{k}.parquet")
    pq.write_table(table.set_column(table.schema.get_field_index("features"), "features",
                                    pa.array(rows, type=pa.list_(pa.uint8()))), tmp_path / f"part-{k}.parquet")
    with pytest.raises(DataError, match=rf"worker 2 .*part-{k}\.parquet: column 'features': row "
                                        rf"{victim - BOUNDS[k]} has 10 values"):
        train(config, None, progress=False)


# ----- on Ray, from S3: workers read their own rows --------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_and_ray(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 holding the digits (uint8 pixels) under s3://digits/parts, the AWS
    variables pointing at it set before Ray starts (its workers inherit them), and a local Ray runtime."""
    import boto3
    import ray
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        local = tmp_path_factory.mktemp("s3-upload")
        write_parts(local)
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        client.create_bucket(Bucket="digits")
        for name in sorted(os.listdir(local)):
            client.upload_file(str(local / name), "digits", f"parts/{name}")
        ray.shutdown()
        ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
        try:
            yield "s3://digits/parts"
        finally:
            ray.shutdown()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def s3_config(uri, backend):
    return small_config(data={"source": "parquet", "path": uri}, backend={"name": backend},
                        training={"workers": 4, "f": 1, "rounds": 16, "eval_every": 16},
                        byzantine={"count": 1, "behaviour": "alie"}, unlearning={"slices": 2})


@pytest.mark.slow
def test_ray_workers_read_their_rows_from_s3_train_delete_and_verify(tmp_path, s3_and_ray):
    on_ray = s3_config(s3_and_ray, "ray")
    local = s3_config(s3_and_ray, "local")
    state = tmp_path / "state"
    result = train(on_ray, state, progress=False)
    assert result.summary["ensemble_test_accuracy"] > 0.2, result.summary  # 10 classes: well above chance
    assert result.summary["group_digests"] == train(local, progress=False).summary["group_digests"]
    victims = trainer_ids(on_ray, 1, seed=5, groups=(0,))
    digests = retrain_digests(local, victims)  # from scratch, in memory, without the victim
    certificate = unlearn_state_dir(state, victims)
    assert certificate["deleted"] == victims
    assert_consistent(state, on_ray, victims, digests)
    report = verify_state_dir(state)
    assert report["ok"], report["failures"]


@pytest.mark.slow
def test_a_ray_worker_receives_its_shard_as_a_description_not_rows(s3_and_ray):
    import ray

    config = s3_config(s3_and_ray, "ray")
    for plan in (make_plan(config), make_plan(config, exclude=trainer_ids(config, 4, seed=1, groups=(0,)))):
        assert len(plan.shards) == 4
        for j, shard in plan.shards.items():
            assert isinstance(shard, ShardSource)
            assert shard.source.path == "s3://digits/parts"
            assert len(pickle.dumps(shard)) < 1024, j
            assert len(ray.cloudpickle.dumps(shard)) < 1024, j  # what Ray sends the actor
            assert not any(isinstance(v, np.ndarray) for v in _leaves(shard)), j


def _leaves(value):
    """Every non-container value inside a (nested) dataclass, tuple, list or dict."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _leaves(getattr(value, field.name))
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    else:
        yield value
