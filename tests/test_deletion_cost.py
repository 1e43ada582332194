"""Work follows the request (docs/design.md, invariant 9): a request reads only its own ids, groups and
stores, through indexed ledger queries; the full audits stay where they belong (a deployment's start, a
cold command, ``verify``). Behaviour only: timings live in bench/deletion_cost.py."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3

import numpy as np

from ostracon.cluster import Deployment
from ostracon.cluster.execution.plan import make_plan
from ostracon.cluster.storage.ledger import open_ledger
from ostracon.cluster.unlearning import locate, unlearn_state_dir, verify_state_dir
from ostracon.cluster.unlearning.exact import abandon_request, start_workers
from ostracon.cluster.unlearning.execute import execute, journal_request
from ostracon.cluster.unlearning.requests import DeletionRequest
from ostracon.cluster.unlearning.trained import open_state, store_problems
from ostracon.cluster.vocabulary import DeletionMode
from ostracon.nodes.shard_store import ShardStore

from helpers import assert_consistent, retrain_digests, trainer_ids

# Tables whose size grows with the history: a request may only reach them through an index.
HISTORY_TABLES = ("deletions", "requests", "operations", "operation_events", "certificates")


def _store_dir(state, worker):
    return state / "stores" / f"worker-{worker}"


def _other_group_worker(config, group):
    """A training worker of ``group``."""
    plan = make_plan(config)
    return next(s.index for s in plan.specs if s.group == group and s.trains)


def test_a_request_audits_only_its_stores_and_a_damaged_store_elsewhere_is_repaired_at_the_next_start(
        state, config):
    first, later = trainer_ids(config, 1, seed=31, groups=(0,)), trainer_ids(config, 1, seed=32, groups=(0,))
    victim = _other_group_worker(config, 1)
    rows = ShardStore.rows_file(_store_dir(state, victim))
    with Deployment(state) as dep:
        # Damaged while the cluster is warm, in a group no request touches: the live worker holds its rows in
        # memory, so the requests are exact; they never read (nor repair) that store.
        damaged = bytearray(rows.read_bytes())
        damaged[len(damaged) // 2] ^= 0xFF
        rows.write_bytes(bytes(damaged))
        for ids in (first, later):
            op = dep.delete(ids)
            list(dep.watch(op.id))
            assert dep.operation(op.id).state == "SUCCEEDED"
            assert dep.certificate(op.id).repairs == ()
        assert rows.read_bytes() == bytes(damaged), "a request rewrote a store of a group it does not touch"
        # Nothing queued when each succeeded: the files for people show its version already.
        assert json.loads((state / "summary.json").read_text())["model_version"] == 3
        where = locate(make_plan(config))
        for i in first + later:
            assert i in ShardStore.read_tombstones(_store_dir(state, where[i][1]))
    summary = json.loads((state / "summary.json").read_text())
    with open_ledger(state, readonly=True) as ledger:
        assert summary["model_version"] == ledger.latest_version()[0] == 3
    assert summary["deleted_samples"] == 2 and [v["model_version"] for v in summary["versions"]] == [1, 2, 3]
    failures = verify_state_dir(state, retrain=False)["failures"]
    assert [(f["name"], f"worker {victim}" in f["detail"]) for f in failures] == [("STORE_HASH_MISMATCH", True)]
    with Deployment(state):  # the full audit at start repairs it before any worker reads it
        pass
    assert rows.read_bytes() != bytes(damaged)
    assert verify_state_dir(state, retrain=False)["failures"] == []
    assert_consistent(state, config, first + later, retrain_digests(config, first + later))


def test_store_problems_audits_the_stores_it_is_given(state, config):
    victim, bystander = _other_group_worker(config, 1), _other_group_worker(config, 0)
    shutil.rmtree(_store_dir(state, victim))
    st = open_state(state)
    try:
        assert set(store_problems(st)) == {victim}
        assert store_problems(st, workers=[bystander]) == {}
        assert set(store_problems(st, workers=[bystander, victim])) == {victim}
        # The workers a request touches: its ids' holders and every worker of their groups, nothing else.
        ids = trainer_ids(config, 1, seed=33, groups=(0,))
        journaled = journal_request(st, DeletionRequest(tuple(ids), DeletionMode.EXACT))
        st.refresh()
        group0 = {s.index for s in st.plan.specs if s.group == 0}
        assert st.request_workers(journaled.ids) == group0
        assert victim not in group0
    finally:
        st.close()


def _trace(st):
    """Every statement the state's ledger connection runs (expanded SQL), appended as it runs."""
    seen: list[str] = []
    st.ledger._db.set_trace_callback(seen.append)
    return seen


def _full_scans(db: sqlite3.Connection, statements):
    """The statements whose plan scans a history table without an index."""
    out = []
    for sql in statements:
        if not sql.lstrip().upper().startswith("SELECT"):
            continue
        plan = db.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
        for *_, detail in plan:
            m = re.match(r"SCAN (\w+)", detail)
            if m and m.group(1) in HISTORY_TABLES:  # "SCAN t USING INDEX" too: it still reads every row
                out.append((sql, detail))
    return out


def _shape(sql: str) -> str:
    """A statement without its literals (ids, times, JSON bodies)."""
    return re.sub(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?(?:e[-+]?\d+)?\b", "?", sql)


def test_a_request_reads_the_ledger_through_indexes_and_as_often_whatever_the_history(state, config):
    plan = make_plan(config)
    where = locate(plan)
    trainers = sorted(i for i, (g, j, _) in where.items() if g == 0 and plan.specs[j].trains)
    rng = np.random.default_rng(5)
    picked = [trainers[k] for k in rng.choice(len(trainers), size=42, replace=False)]
    # Same group, same slice for both timed requests: the same replay, so the same work on the ledger.
    first = picked[0]
    second = next(i for i in picked[1:] if where[i][2] == where[first][2] and where[i][1] == where[first][1])
    history = [i for i in picked[1:] if i != second]
    st = open_state(state)
    live = start_workers(st)
    try:
        st.ledger.ensure_schema()
        seen = _trace(st)
        execute(st, DeletionRequest((first,), DeletionMode.EXACT), live=live)
        without_history = list(seen)
        execute(st, DeletionRequest(tuple(history), DeletionMode.EXACT), live=live)
        seen.clear()
        execute(st, DeletionRequest((second,), DeletionMode.EXACT), live=live)
        with_history = list(seen)
        st.ledger._db.set_trace_callback(None)
        assert len(st.deletions) == 2 + len(history)
        assert _full_scans(st.ledger._db, without_history + with_history) == []
        # No statement that reads everything, and none more often after a history of 40 deletions.
        assert [_shape(s) for s in with_history] == [_shape(s) for s in without_history]
        assert not any(re.search(r"FROM deletions\s*$", s) for s in with_history)
    finally:
        live.backend.shutdown()
        st.close()
    assert_consistent(state, config, [first, second, *history],
                      retrain_digests(config, [first, second, *history]))


def test_incremental_bookkeeping_agrees_with_a_full_read_and_an_abandoned_request_is_forgotten(state, config):
    a, b = trainer_ids(config, 2, seed=34, groups=(0, 1))
    st = open_state(state)
    live = start_workers(st)
    try:
        execute(st, DeletionRequest((a,), DeletionMode.EXACT), live=live)
        journaled = journal_request(st, DeletionRequest((b,), DeletionMode.EXACT))
        st.refresh()
        full = st.ledger.deletions()
        assert st.deletions == full
        assert st.ids_by_worker() == {d.worker: {i for i, e in full.items() if e.worker == d.worker}
                                      for d in full.values()}
        assert st.published_ids() == {a} and st.published_count() == 1
        b_worker = full[b].worker
        assert b in st.plan.shards[b_worker].deleted and b in st.deleted_from(b_worker)
        abandon_request(st, journaled.id, live)
        assert st.deletions == st.ledger.deletions() == {a: full[a]}
        assert b not in st.plan.shards[b_worker].deleted and b not in st.deleted_from(b_worker)
        assert b in ShardStore.open(_store_dir(state, b_worker)), "the abandoned id is back in its store"
        assert store_problems(st) == {}
    finally:
        live.backend.shutdown()
        st.close()
    with open_ledger(state, readonly=True) as ledger:
        assert ledger.request_step(journaled.id) == "abandoned" and ledger.request_step(10**6) is None


def test_a_warm_request_evaluates_only_the_models_it_changed_and_reports_what_a_cold_one_does(
        tmp_path, state, config):
    cold = tmp_path / "cold"
    shutil.copytree(state, cold)
    a, b = trainer_ids(config, 2, seed=35, groups=(0, 1))
    warm_evaluations = []
    with Deployment(state) as dep:
        for ids in ([a], [b]):
            op = dep.delete(ids)
            list(dep.watch(op.id))
            warm_evaluations.append(dep.certificate(op.id).to_dict()["evaluation"])
        live = dep._live
        assert live is not None
        # One version's scores are kept (every honest worker's, by its weights digest), no more.
        with open_ledger(state, readonly=True) as ledger:
            _, record = ledger.latest_version()
        assert set(live.scores) == {(int(j), d) for j, d in record.worker_digests.items()}
    cold_evaluations = [unlearn_state_dir(cold, [a])["evaluation"], unlearn_state_dir(cold, [b])["evaluation"]]
    assert warm_evaluations == cold_evaluations
