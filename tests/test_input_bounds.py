"""Hostile inputs to the coordinator (issue 19): every input is bounded before any work, each refusal
names its field and its limit and changes nothing on disk; operation ids order by their number past a
million; what ``ostracon train``/``unlearn`` write is readable by its owner only.

Real components only: a real Deployment on the in-process backend over a trained state directory, the
real SQLite ledger and journal, the command line run in this process."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
import stat
import time

import numpy as np
import pytest

from ostracon.cluster import Deployment, RequestError
from ostracon.cluster.cli import PRIVATE_COMMANDS, SERVE_LIMITS, build_parser, main
from ostracon.cluster.coordinator import deployment as deployment_module
from ostracon.cluster.coordinator.journal import MAX_PAGE_SIZE, Journal
from ostracon.cluster.execution.plan import make_plan
from ostracon.cluster.storage.ledger import ledger_path, open_ledger
from ostracon.cluster.unlearning.requests import LimitExceededError, UnlearningError, parse_request
from ostracon.cluster.vocabulary import DeletionMode, OperationState

from helpers import stable_bytes, trainer_ids

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def refused(error, call, *args, **kwargs) -> str:
    """The message of the ``error`` that ``call`` raises; it must be short (never an echo of the input)."""
    with pytest.raises(error) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert len(message) < 400, message
    return message


# ----- the one validator, as the command line uses it (no limits) and as the coordinator does ----------


def test_parse_request_limits_are_off_by_default_and_bound_the_raw_count_first():
    long_id = "x" * 10_000
    assert parse_request([long_id, "b"]).ids == (long_id, "b")  # the command line: no limit by default
    # 10M copies of one id: refused on the count as given, before de-duplication or any per-id work.
    many = ("a",) * 10_000_000
    started = time.perf_counter()
    message = refused(LimitExceededError, parse_request, many, max_ids=100, merge_duplicates=True)
    assert time.perf_counter() - started < 0.1
    assert "10000000 ids exceed max_ids_per_request = 100" in message
    # An endless iterator is read one past the limit, no further.
    endless = itertools.repeat("a")
    message = refused(LimitExceededError, parse_request, endless, max_ids=5, merge_duplicates=True)
    assert "more than 5 ids exceed max_ids_per_request = 5" in message
    # At the limit, duplicates included, it is accepted (and merged when the caller says so).
    assert parse_request(["a"] * 5, max_ids=5, merge_duplicates=True).ids == ("a",)
    message = refused(LimitExceededError, parse_request, ["ok", "y" * 257], max_id_chars=256)
    assert "sample_ids[1] has 257 characters, over max_id_chars = 256" in message
    assert parse_request(["y" * 256], max_id_chars=256).ids == ("y" * 256,)


def test_limit_errors_keep_their_field_for_the_service():
    with pytest.raises(UnlearningError) as info:
        parse_request(["a", "b"], max_ids=1)
    error = info.value
    assert isinstance(error, LimitExceededError) and isinstance(error, RequestError)
    assert error.field == "sample_ids"
    prefixed = error.in_field()
    assert type(prefixed) is LimitExceededError and str(prefixed).startswith("sample_ids: 2 ids exceed")


def test_messages_never_echo_a_huge_input():
    huge = "m" * 1_000_000
    message = refused(UnlearningError, parse_request, ["a"], DeletionMode.APPROXIMATE, huge)
    assert "1000000 characters" in message
    message = refused(UnlearningError, parse_request, ["a", "a"])  # the command line refuses duplicates
    assert "duplicate" in message


# ----- the deployment: every oversized input refused, nothing changed --------------------------------


def test_oversized_inputs_are_refused_naming_the_limit_and_change_nothing(state, config):
    some = trainer_ids(config, 2, seed=5)
    features = make_plan(config).test_features[:4].astype(np.float32)
    limits = dict(max_ids_per_request=5, max_id_chars=24, max_idempotency_key_chars=16, max_predict_rows=8,
                  max_predict_bytes=4 * 64 * 4)
    with_nan = features.copy()
    with_nan[2, 7] = np.nan
    with Deployment(state, **limits) as dep:
        before = stable_bytes(state)
        cases = [
            ("idempotency_key", "max_idempotency_key_chars = 16",
             lambda: dep.delete(some, idempotency_key="k" * 17)),
            ("idempotency_key", "max_idempotency_key_chars = 16",
             lambda: dep.delete(some, idempotency_key="k" * 50_000_000)),
            ("sample_ids", "10000000 ids exceed max_ids_per_request = 5", lambda: dep.delete([some[0]] * 10_000_000)),
            ("sample_ids", "6 ids exceed max_ids_per_request = 5", lambda: dep.delete(some * 3)),
            ("sample_ids", "max_id_chars = 24", lambda: dep.delete([some[0], "i" * 25])),
            ("inputs", "9 rows exceed max_predict_rows = 8", lambda: dep.predict(np.zeros((9, 64), np.float32))),
            ("inputs", "max_predict_bytes = 1024", lambda: dep.predict(np.zeros((8, 64), np.float32))),
            ("inputs", "NaN or infinite", lambda: dep.predict(with_nan)),
            ("inputs", "NaN or infinite", lambda: dep.predict(np.full((1, 64), np.inf, np.float32))),
            ("inputs", "NaN or infinite", lambda: dep.predict(np.full((1, 64), -np.inf, np.float64))),
            ("page_token", "not a token", lambda: dep.operations(page_token="op-" + "9" * 10_000_000)),
            ("page_token", "not a token", lambda: dep.operations(page_token="op-²")),
            ("operation_id", "32 characters", lambda: dep.operation("op-" + "1" * 1_000_000)),
            ("operation_id", "32 characters", lambda: dep.cancel("x" * 1_000_000)),
            ("operation_id", "32 characters", lambda: dep.watch("x" * 1_000_000)),
            ("operation_id", "32 characters", lambda: dep.certificate("x" * 1_000_000)),
        ]
        for field, limit, call in cases:
            started = time.perf_counter()
            message = refused(RequestError, call)
            assert message.startswith(f"{field}: "), (field, message)
            assert limit in message, (field, message)
            assert time.perf_counter() - started < 1.0, (field, message)
        with pytest.raises(RequestError, match=r"^inputs: 1 row\(s\) hold NaN or infinite values \(first: row 2\)"):
            dep.predict(with_nan)
        assert dep.operations() == ([], "")
        assert stable_bytes(state) == before, "a refused input changed nothing on disk"
        # At the limits, everything is accepted.
        labels, _, _ = dep.predict(np.tile(features, (2, 1))[:4])
        assert labels.shape == (4,)
        op = dep.delete([some[0]] * 5, idempotency_key="k" * 16)
        assert op.sample_ids == (some[0],)
        list(dep.watch(op.id))
        assert dep.operation(op.id).state is OperationState.SUCCEEDED


def test_the_default_limits_are_documented_and_the_serve_flags_agree(state):
    dep = Deployment(state)
    assert (dep.max_ids_per_request, dep.max_id_chars, dep.max_idempotency_key_chars, dep.max_predict_rows,
            dep.max_predict_bytes, dep.max_page_size) == (10_000, 256, 256, 4096, 16 * 1024 * 1024, 1000)
    args = build_parser().parse_args(["serve", "--state-dir", str(state)])
    assert args.max_ids_per_request == deployment_module.DEFAULT_MAX_IDS_PER_REQUEST
    for _, (dest, default, _) in SERVE_LIMITS.items():
        assert getattr(args, dest) == default == getattr(dep, dest), dest
    with open(os.path.join(os.path.dirname(FIXTURES), "..", "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    for flag in ["--max-ids-per-request", *SERVE_LIMITS]:
        assert f"`{flag}`" in readme, f"README's Limits table documents {flag}"
    for name, bad in [("max_predict_rows", 0), ("max_id_chars", -1), ("max_predict_bytes", 1.5)]:
        with pytest.raises(ValueError, match=f"^{name}: "):
            Deployment(state, **{name: bad})


def test_a_page_larger_than_the_maximum_is_served_as_the_maximum(state):
    with open_ledger(state) as ledger:
        ledger.ensure_schema()
    _insert_operation(ledger_path(state), OperationState.CANCELLED,
                      *(f"op-{k:06d}" for k in range(1, MAX_PAGE_SIZE + 6)))
    journal = Journal(ledger_path(state))
    try:
        ops, token = journal.page(10**9, "")
        assert len(ops) == MAX_PAGE_SIZE and token == ops[-1].id
        assert len(journal.page(0, "")[0]) == 50
    finally:
        journal.close()


# ----- operation ids order by their number -----------------------------------------------------------


def _insert_operation(path: str, state: OperationState, *op_ids: str) -> None:
    """Operations rows written by SQL in one transaction (a million Journal.submit calls would take minutes)."""
    db = sqlite3.connect(path)
    try:
        with db:
            db.executemany(
                "INSERT INTO operations(id, idempotency_key, body_sha256, mode, method, sample_ids, state, progress, "
                "message, model_version, request_id, create_time, update_time) "
                "VALUES (?, NULL, 'x', ?, '', ?, ?, 0, 'inserted by the test', 0, NULL, ?, ?)",
                [(i, DeletionMode.EXACT.value, json.dumps([f"sample-of-{i}"]), state.value, time.time(), time.time())
                 for i in op_ids])
    finally:
        db.close()


def test_operation_ids_past_a_million_sort_by_number(state):
    with open_ledger(state) as ledger:
        ledger.ensure_schema()
    path = ledger_path(state)
    journal = Journal(path)
    try:
        low = [journal.submit([f"a{k}"], DeletionMode.EXACT, "", "")[0].id for k in range(3)]
        assert low == ["op-000001", "op-000002", "op-000003"]  # below a million: the format is unchanged
        _insert_operation(path, OperationState.PENDING, "op-999999")
        _insert_operation(path, OperationState.PENDING, "op-100000")  # text order would put 1000000 next to it
        high = [journal.submit([f"b{k}"], DeletionMode.EXACT, "", "")[0].id for k in range(2)]
        assert high == ["op-1000000", "op-1000001"]
        newest_first = ["op-1000001", "op-1000000", "op-999999", "op-100000", "op-000003", "op-000002", "op-000001"]
        assert [o.id for o in journal.page(100, "")[0]] == newest_first
        walked, token = [], ""
        while True:  # page tokens continue by number across the million boundary
            ops, token = journal.page(2, token)
            walked += [o.id for o in ops]
            if not token:
                break
        assert walked == newest_first
        # The worker thread takes the queue oldest first, by number.
        assert [o.id for o in journal.in_state(OperationState.PENDING)] == list(reversed(newest_first))
        plan = journal._db.execute("EXPLAIN QUERY PLAN SELECT id FROM operations WHERE CAST(substr(id, 4) AS INTEGER) "
                                   "< 5 ORDER BY CAST(substr(id, 4) AS INTEGER) DESC LIMIT 3").fetchall()
        assert "operations_by_number" in str(plan), plan
    finally:
        journal.close()


def test_a_served_directory_lists_op_1000000_first_and_an_old_ledger_gains_the_index(state, config, tmp_path):
    a = trainer_ids(config, 1, seed=9)[0]
    with Deployment(state) as dep:
        _insert_operation(ledger_path(state), OperationState.CANCELLED, "op-999999")
        op = dep.delete([a])
        assert op.id == "op-1000000"
        ops, token = dep.operations(page_size=1)
        assert [o.id for o in ops] == ["op-1000000"] and token == "op-1000000"
        ops, token = dep.operations(page_size=1, page_token=token)
        assert [o.id for o in ops] == ["op-999999"] and token == ""
        assert list(dep.watch(op.id))[-1][1].state is OperationState.SUCCEEDED
    # A ledger written before the journal existed (tests/fixtures/state_v0) still opens and numbers from 1.
    old = tmp_path / "v0"
    shutil.copytree(os.path.join(FIXTURES, "state_v0"), old)
    with open_ledger(old) as ledger:
        ledger.ensure_schema()
    journal = Journal(ledger_path(old))
    try:
        assert journal.submit(["x"], DeletionMode.EXACT, "", "")[0].id == "op-000001"
        assert [o.id for o in journal.page(10, "")[0]] == ["op-000001"]
    finally:
        journal.close()


# ----- state files are private -----------------------------------------------------------------------

TOML = """
seed = 0
[data]
source = "digits"
partition = "iid"
[model]
name = "mlp"
params = { hidden = 16 }
[training]
workers = 4
f = 1
rounds = 8
eval_every = 8
[byzantine]
count = 1
behaviour = "alie"
[unlearning]
groups = 2
slices = 2
"""


def _modes(root) -> dict[str, int]:
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            out[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return out


def test_train_and_unlearn_create_owner_only_files(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(TOML)
    state = tmp_path / "state"
    previous = os.umask(0o022)  # a typical shell: files 0644 unless the command says otherwise
    try:
        assert main(["train", "-c", str(config), "-o", str(state), "--no-progress"]) == 0
        assert os.umask(0o022) == 0o022, "the command restored the caller's umask"
        from ostracon.cluster.config import load
        from ostracon.cluster.unlearning import locate

        some = sorted(locate(make_plan(load(config))))[:1]
        out = tmp_path / "out" / "cert.json"
        assert main(["unlearn", "--state-dir", str(state), "--ids", some[0], "--out", str(out)]) == 0
    finally:
        os.umask(previous)
    capsys.readouterr()
    modes = _modes(state)
    stores = [p for p in modes if p.endswith("rows.npz")]
    certificates = [p for p in modes if p.startswith("certificates" + os.sep) and p.endswith(".json")]
    checkpoints = [p for p in modes if p.endswith(".pt")]
    assert stores and certificates and checkpoints
    for path in ["ledger.sqlite", *stores, *certificates, *checkpoints]:
        assert modes[path] & 0o077 == 0, f"{path} is {oct(modes[path])}"
    open_to_others = {p: oct(m) for p, m in modes.items() if m & 0o077}
    assert not open_to_others, open_to_others
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(out).st_mode) & 0o077 == 0
    assert set(PRIVATE_COMMANDS) == {"train", "serve", "unlearn"}
