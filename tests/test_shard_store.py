"""ShardStore on real files: deleted samples are durably and physically gone (docs/design.md, invariant 3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ostracon.nodes.shard_store import LOG_FILE, ROWS_FILE, CorruptStoreError, ShardStore, _append_tombstones

N, D = 40, 8


def _rows(n=N, seed=0):
    """Rows in a scrambled order, random float32 features (each row's 32 bytes are unique)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    ids = np.array([f"id-{i:03d}" for i in order])
    features = rng.standard_normal((n, D)).astype(np.float32)
    labels = rng.integers(0, 10, n)
    slices = rng.integers(0, 3, n)
    return ids, features, labels, slices


def _row_bytes(rows, sample_id):
    ids, features, _, _ = rows
    return features[list(ids).index(sample_id)].tobytes()


def _all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _same(a: ShardStore, b: ShardStore) -> None:
    for field in ("ids", "features", "labels", "slices"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert a.deleted() == b.deleted()


def test_in_memory_store_is_sorted_and_typed():
    rows = _rows()
    store = ShardStore.from_arrays(*rows)
    assert store.path is None and len(store) == N
    assert list(store.ids) == sorted(rows[0].tolist())
    assert store.features.dtype == np.float32 and store.labels.dtype == np.int64 and store.slices.dtype == np.int64
    i = list(rows[0]).index("id-007")
    assert np.array_equal(store.features[list(store.ids).index("id-007")], rows[1][i])
    assert "id-007" in store and "id-999" not in store and 7 not in store
    with pytest.raises(ValueError):
        store.features[0, 0] = 1.0  # read-only: a caller cannot corrupt the store in place


def test_round_trip_on_disk(tmp_path):
    rows = _rows()
    store = ShardStore.from_arrays(*rows, path=tmp_path / "shard")
    assert sorted(p.name for p in (tmp_path / "shard").iterdir()) == [ROWS_FILE, LOG_FILE]
    _same(store, ShardStore.open(tmp_path / "shard"))
    _same(store, ShardStore.from_arrays(*rows))  # same content as the in-memory build
    with pytest.raises(FileNotFoundError, match="no shard store"):
        ShardStore.open(tmp_path / "elsewhere")


def test_view_filters_by_slice_and_keeps_id_order():
    rows = _rows()
    store = ShardStore.from_arrays(*rows)
    for max_slice in range(3):
        ids, features, labels = store.view(max_slice)
        expected = sorted(i for i, s in zip(rows[0], rows[3], strict=True) if s <= max_slice)
        assert list(ids) == expected
        for sample_id, x, y in zip(ids, features, labels, strict=True):
            j = list(rows[0]).index(sample_id)
            assert np.array_equal(x, rows[1][j]) and y == rows[2][j]
    # Order comes from the ids, never from the source order.
    perm = np.random.default_rng(5).permutation(N)
    other = ShardStore.from_arrays(*(a[perm] for a in rows))
    assert all(np.array_equal(a, b) for a, b in zip(other.view(1), store.view(1), strict=True))
    assert len(store.view(-1)[0]) == 0


def test_delete_then_reopen_and_rebuild(tmp_path):
    rows = _rows()
    path = tmp_path / "shard"
    store = ShardStore.from_arrays(*rows, path=path)
    assert store.delete(["id-003", "id-011", "id-003"]) == ["id-003", "id-011"]
    assert "id-003" not in store and len(store) == N - 2 and store.deleted() == {"id-003", "id-011"}
    reopened = ShardStore.open(path)
    _same(store, reopened)
    rebuilt = ShardStore.from_arrays(*rows, path=path)  # the original source, deleted rows included
    _same(store, rebuilt)
    assert "id-003" not in rebuilt and "id-011" not in rebuilt
    assert store.unknown(["id-003", "id-004", "nope"]) == ["nope"]
    assert ShardStore.read_tombstones(path) == {"id-003", "id-011"}


def test_deleted_bytes_are_gone_from_every_file(tmp_path):
    rows = _rows()
    path = tmp_path / "shard"
    store = ShardStore.from_arrays(*rows, path=path)
    victims = ["id-000", "id-021", "id-039"]
    survivor = _row_bytes(rows, "id-020")
    before = _all_bytes(path)
    assert all(_row_bytes(rows, v) in before for v in victims)  # the search can find them
    store.delete(victims)
    after = _all_bytes(path)
    assert survivor in after  # proves the search works on the compacted file
    for v in victims:
        assert _row_bytes(rows, v) not in after
    log_lines = (path / LOG_FILE).read_text().splitlines()
    assert [json.loads(line)["ids"] for line in log_lines] == [victims]
    # Rebuilding from the original rows must not write them back either.
    ShardStore.from_arrays(*rows, path=path)
    assert all(_row_bytes(rows, v) not in _all_bytes(path) for v in victims)


def test_unknown_id_raises_and_changes_nothing(tmp_path):
    path = tmp_path / "shard"
    store = ShardStore.from_arrays(*_rows(), path=path)
    store.delete(["id-001"])
    before = _snapshot(path)
    with pytest.raises(KeyError, match="'nope'.*'also-nope'"):
        store.delete(["id-002", "nope", "id-001", "also-nope"])
    assert _snapshot(path) == before
    assert "id-002" in store and len(store) == N - 1 and store.deleted() == {"id-001"}
    with pytest.raises(TypeError):
        store.delete("id-002")  # a bare string is not a list of ids
    with pytest.raises(TypeError):
        store.delete([2])
    assert _snapshot(path) == before


def test_repeated_delete_is_idempotent(tmp_path):
    path = tmp_path / "shard"
    store = ShardStore.from_arrays(*_rows(), path=path)
    assert store.delete(["id-005"]) == ["id-005"]
    before = _snapshot(path)
    assert store.delete(["id-005"]) == []
    assert _snapshot(path) == before  # no new log line, no rewrite
    assert ShardStore.open(path).delete(["id-005", "id-006"]) == ["id-006"]


def test_in_memory_delete():
    store = ShardStore.from_arrays(*_rows())
    assert store.delete(["id-010"]) == ["id-010"]
    assert "id-010" not in store and store.deleted() == {"id-010"} and store.delete(["id-010"]) == []


def test_crash_between_log_append_and_compaction(tmp_path):
    rows = _rows()
    path = tmp_path / "shard"
    ShardStore.from_arrays(*rows, path=path)
    _append_tombstones(path, ["id-002", "id-030"])  # the durable step only, then "crash"
    assert _row_bytes(rows, "id-002") in (path / ROWS_FILE).read_bytes()
    store = ShardStore.open(path)
    assert "id-002" not in store and "id-030" not in store and len(store) == N - 2
    data = _all_bytes(path)  # open finished the compaction
    assert _row_bytes(rows, "id-002") not in data and _row_bytes(rows, "id-030") not in data
    assert _row_bytes(rows, "id-031") in data


def test_crash_by_hand_written_log_line_hides_rows_on_rebuild(tmp_path):
    rows = _rows()
    path = tmp_path / "shard"
    ShardStore.from_arrays(*rows, path=path)
    with open(path / LOG_FILE, "a") as handle:
        handle.write(json.dumps({"ids": ["id-004"], "time": 0}) + "\n")
    store = ShardStore.from_arrays(*rows, path=path)
    assert "id-004" not in store and _row_bytes(rows, "id-004") not in _all_bytes(path)


def test_stale_temporary_file_is_removed(tmp_path):
    rows = _rows()
    path = tmp_path / "shard"
    store = ShardStore.from_arrays(*rows, path=path)
    (path / (ROWS_FILE + ".tmp")).write_bytes((path / ROWS_FILE).read_bytes())  # crash mid-compaction
    store.delete(["id-008"])
    ShardStore.open(path)
    assert not (path / (ROWS_FILE + ".tmp")).exists()
    assert _row_bytes(rows, "id-008") not in _all_bytes(path)


def test_partial_last_log_line_is_ignored_and_repaired(tmp_path):
    path = tmp_path / "shard"
    ShardStore.from_arrays(*_rows(), path=path).delete(["id-001"])
    with open(path / LOG_FILE, "ab") as handle:
        handle.write(b'{"ids": ["id-00')  # crash mid-append: never acknowledged
    store = ShardStore.open(path)
    assert store.deleted() == {"id-001"} and "id-002" in store
    store.delete(["id-002"])
    lines = (path / LOG_FILE).read_text().splitlines()
    assert [json.loads(line)["ids"] for line in lines] == [["id-001"], ["id-002"]]


def test_corrupt_complete_log_line_is_an_error(tmp_path):
    path = tmp_path / "shard"
    ShardStore.from_arrays(*_rows(), path=path)
    (path / LOG_FILE).write_bytes(b'{"ids": ["id-001"]}\nnot json\n')
    before = _snapshot(path)
    with pytest.raises(CorruptStoreError, match="line 2"):
        ShardStore.open(path)
    (path / LOG_FILE).write_bytes(b'{"ids": "id-001"}\n')
    with pytest.raises(CorruptStoreError, match="line 1"):
        ShardStore.open(path)
    (path / LOG_FILE).write_bytes(before[LOG_FILE])


def test_corrupt_data_file_is_an_error(tmp_path):
    path = tmp_path / "shard"
    ShardStore.from_arrays(*_rows(), path=path)
    (path / ROWS_FILE).write_bytes(b"garbage")
    with pytest.raises(CorruptStoreError, match=ROWS_FILE):
        ShardStore.open(path)


def test_rebuild_with_different_rows_is_refused(tmp_path):
    rows = _rows()
    path = tmp_path / "shard"
    ShardStore.from_arrays(*rows, path=path)
    before = _snapshot(path)
    with pytest.raises(ValueError, match="different rows"):
        ShardStore.from_arrays(*_rows(seed=1), path=path)
    ids, features, labels, slices = rows
    with pytest.raises(ValueError, match="different features, labels or slices"):
        ShardStore.from_arrays(ids, features, labels, (slices + 1) % 3, path=path)
    assert _snapshot(path) == before


def test_bad_rows_are_refused():
    ids, features, labels, slices = _rows()
    dup = ids.copy()
    dup[1] = dup[0]
    with pytest.raises(ValueError, match="duplicate ids"):
        ShardStore.from_arrays(dup, features, labels, slices)
    with pytest.raises(ValueError, match="labels"):
        ShardStore.from_arrays(ids, features, labels[:-1], slices)
    with pytest.raises(ValueError, match="slices"):
        ShardStore.from_arrays(ids, features, labels, slices - 5)
    with pytest.raises(ValueError, match="strings"):
        ShardStore.from_arrays(np.arange(N), features, labels, slices)
    nul = ids.copy()
    nul[0] = "a\x00b"
    with pytest.raises(ValueError, match="NUL"):
        ShardStore.from_arrays(nul, features, labels, slices)


def test_empty_store_and_delete_everything(tmp_path):
    rows = _rows(n=3)
    path = tmp_path / "shard"
    store = ShardStore.from_arrays(*rows, path=path)
    store.delete(list(rows[0]))
    reopened = ShardStore.open(path)
    assert len(reopened) == 0 and reopened.feature_shape == (D,) and len(reopened.view(5)[0]) == 0
