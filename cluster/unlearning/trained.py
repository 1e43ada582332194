"""A trained state directory, opened under its lock: config, ledger, source data, the plan of its
workers, and the audits of the files derived from the ledger (shard stores, checkpoints,
``state.json``, certificates). ``sync_stores`` is the one place stores are made to agree with the
ledger (and live workers re-read them)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ostracon.nodes.durable import file_sha256
from ostracon.nodes.seeding import set_deterministic
from ostracon.nodes.shard_store import CorruptStoreError, ShardStore
from ostracon.nodes.sources import ShardSource, SourceIndex, read_shard
from ostracon.nodes.sources import SourceChangedError as SourceRowsChanged
from ostracon.nodes.worker import Weights, Worker, model_weights

from .. import faults
from ..config import Config, load
from ..errors import RequestError, SourceChangedError, StateDirError
from ..execution.backend import Backend
from ..execution.plan import RunPlan, dataset_digest, load_config_dataset, make_plan, read_config_index
from ..execution.training import CONFIG_JSON, INDEX_DIGEST, SHARD_DIGESTS, TEST_DIGEST, model_digests
from ..storage import statedir
from ..storage.checkpoints import CheckpointStore
from ..storage.ledger import Deletion, Ledger, open_ledger
from ..storage.outputs import STATE_JSON, derived_state
from ..storage.records import Placement, VersionRecord

log = logging.getLogger(__name__)

# Overrides a command may apply to a trained state's recorded config: where to run and how to unlearn
# approximately, never what was trained.
RUNTIME_KEYS = ("backend.", "unlearning.method", "unlearning.gate.", "unlearning.ft.", "unlearning.ga.",
                "unlearning.npo.", "unlearning.rl.", "unlearning.l1_sparse.", "unlearning.salun.", "unlearning.ssd.")


def recorded_digests(ledger: Ledger) -> dict[str, Any]:
    """What training recorded the source's rows hash to (``make_plan``'s ``digests``); empty for states
    trained before workers read their own rows."""
    return {"shards": ledger.meta(SHARD_DIGESTS) or {}, "test": ledger.meta(TEST_DIGEST)}


def check_source(config: Config, ledger: Ledger, index: SourceIndex) -> None:
    """Refuse a source whose ids, labels or feature layout changed since training (the features of each
    worker's rows are checked by the worker that reads them, the held-out rows by ``open_state``). A state
    trained before records one digest of every row instead: it is checked by reading them all."""
    where = f"{config.data.source}{' ' + config.data.path if config.data.path else ''}"
    recorded = ledger.meta(INDEX_DIGEST)
    if recorded is not None:
        found = index.digest()
    else:
        recorded, found = ledger.meta("source_digest"), dataset_digest(load_config_dataset(config))
    if found != recorded:
        raise SourceChangedError(
            f"the source data ({where}) differs from the data this state was trained on (sha256 {found[:16]}... != "
            f"recorded {str(recorded)[:16]}...); exact deletion and verification need the original data")


@dataclass
class TrainedState:
    """A state directory opened under its lock (``open_state``); ``plan`` gives every worker the source's
    rows minus every id the ledger deletes (``refresh`` after journaling). ``index``: the source's ids and
    labels (no features: workers read their own rows).

    ``deletions`` is read whole once, at open; then ``refresh`` reads only the requests journaled since
    (request ids only grow), and the ids are also kept by worker, so that a request's bookkeeping costs
    its own ids, not the history (docs/design.md, invariant 9)."""

    state_dir: str
    config: Config
    ledger: Ledger
    index: SourceIndex
    plan: RunPlan
    deletions: dict[str, Deletion] = field(default_factory=dict)
    # the highest request id whose deletions ``deletions`` holds; the deleted ids by worker
    read_through: int = field(default=0, repr=False)
    _by_worker: dict[int, set[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index_deletions(self.deletions.values())
        self.read_through = max((d.request_id for d in self.deletions.values()), default=self.read_through)

    def _index_deletions(self, found: Iterable[Deletion]) -> None:
        for d in found:
            self._by_worker.setdefault(d.worker, set()).add(d.sample_id)

    def refresh(self, *, full: bool = False) -> None:
        """Read the deletions of the requests journaled since the last read; the workers' data is the
        source minus all of them (the shards holding new ones are updated; nothing is placed again).
        ``full``: read every deletion again (after ``Ledger.abandon``, the one change that removes some)."""
        if not full:
            new = self.ledger.deletions_after(self.read_through)
            new = {i: d for i, d in new.items() if i not in self.deletions}
            self.deletions.update(new)
            self._index_deletions(new.values())
            self.read_through = max((d.request_id for d in new.values()), default=self.read_through)
            if new:
                self.plan = self.plan.with_deleted(new)
            return
        known = set(self.deletions)
        self.deletions = self.ledger.deletions()
        self._by_worker = {}
        self._index_deletions(self.deletions.values())
        self.read_through = max((d.request_id for d in self.deletions.values()), default=0)
        if set(self.deletions) >= known:
            self.plan = self.plan.with_deleted(set(self.deletions) - known)
        else:  # a request was abandoned: its ids are back in the workers' data; place everything again
            self.plan = make_plan(self.config, state_dir=self.state_dir, exclude=self.deletions, index=self.index,
                                  digests=recorded_digests(self.ledger))

    @property
    def checkpoints(self) -> CheckpointStore:
        return CheckpointStore(self.state_dir)

    def placement_of(self, ids: Iterable[str]) -> dict[str, Placement]:
        """Where each id of the source's training data lives (deleted ones included)."""
        return {i: Placement(*self.plan.placement[i]) for i in ids}

    def unpublished_ids(self) -> set[str]:
        """The deleted ids of requests journaled but not yet published (found through the ledger's step
        index: a few requests, whatever the history)."""
        return {i for r in self.ledger.requests(unfinished_only=True) if not r.step.is_published for i in r.ids}

    def published_ids(self) -> set[str]:
        """Every deleted id a published model version no longer carries."""
        return set(self.deletions) - self.unpublished_ids()

    def published_count(self) -> int:
        """``len(published_ids())`` without copying the history."""
        return len(self.deletions) - len(self.unpublished_ids() & self.deletions.keys())

    def deleted_from(self, worker: int) -> AbstractSet[str]:
        """The ids the ledger deletes from worker ``worker``'s store (as of the last ``refresh``; read-only)."""
        return self._by_worker.get(worker, frozenset())

    def ids_by_worker(self, ids: Collection[str] | None = None) -> dict[int, set[str]]:
        """Deleted ids by the worker whose store held them: all of them, or those of ``ids``."""
        if ids is None:
            return {j: set(found) for j, found in self._by_worker.items() if found}
        out: dict[int, set[str]] = {}
        for i in ids:
            d = self.deletions.get(i)
            if d is not None:
                out.setdefault(d.worker, set()).add(i)
        return out

    def request_workers(self, ids: Iterable[str]) -> set[int]:
        """The workers a request of ``ids`` touches: the holders of its deleted ids and every worker of
        their groups (a replay reads every store of its group)."""
        groups = set()
        workers = set()
        for i in ids:
            d = self.deletions.get(i)
            if d is not None:
                groups.add(d.group)
                workers.add(d.worker)
        workers.update(j for g in groups for j in self.plan.group_workers(g))
        return {j for j in workers if j in self.plan.shards}

    def close(self) -> None:
        self.ledger.close()


def open_state(state_dir: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None, *,
               readonly: bool = False) -> TrainedState:
    """Open a trained state directory (the caller holds its lock); refuses an incomplete one, a
    corrupt ledger, and source data that changed since training."""
    state_dir = os.fspath(state_dir)
    statedir.require_complete(state_dir)
    config_path = os.path.join(state_dir, CONFIG_JSON)
    if not os.path.isfile(config_path):
        raise StateDirError(f"{state_dir} is not a trained state directory (no config.json); "
                                     "run `ostracon train -o` first")
    overrides = dict(overrides or {})
    bad = [k for k in overrides if not k.startswith(RUNTIME_KEYS)]
    if bad:
        raise RequestError("only backend.* and approximate-unlearning settings (unlearning.method, unlearning.gate.*, "
                           f"unlearning.<method>.*) can be overridden on a trained state, not: {', '.join(bad)}")
    ledger = open_ledger(state_dir, readonly=readonly)
    try:
        config = load(config_path, overrides)
        if config.deterministic:
            set_deterministic(config.threads)
        index = read_config_index(config)
        check_source(config, ledger, index)
        deletions = ledger.deletions()
        plan = make_plan(config, state_dir=state_dir, exclude=deletions, index=index, digests=recorded_digests(ledger))
        plan.check_held_out()  # a changed held-out row is refused before anything changes
        state = TrainedState(state_dir, config, ledger, index, plan, deletions)
    except BaseException:
        ledger.close()
        raise
    return state


def forget_by_group(st: TrainedState, ids: Iterable[str]) -> dict[int, list[str]]:
    """The request's ids that some model trained on, by group (ids held by attackers need no update)."""
    out: dict[int, list[str]] = {}
    for i in ids:
        g, j, _ = st.plan.placement[i]
        if st.plan.specs[j].trains:
            out.setdefault(g, []).append(i)
    return out


# ----- published models -------------------------------------------------------------------------------
def published_states(st: TrainedState, record: VersionRecord, group: int) -> dict[int, dict[str, np.ndarray]]:
    """The published states of ``group``'s stateful workers (hash-checked): its approximate model if an
    approximate deletion updated it since its last replay, else its last stage checkpoint."""
    approximate = record.approximate_model(group)
    if approximate is not None:
        return st.checkpoints.approximate_states(approximate)
    last = st.config.unlearning.slices - 1
    return st.checkpoints.states(group, last, record.checkpoint(group, last))


def final_thetas(st: TrainedState, record: VersionRecord) -> dict[int, Weights]:
    """Every honest worker's published weights in the version ``record`` describes (its parameters, with its
    buffers when the model has any: ``nodes.worker.model_weights``)."""
    out = {}
    for g in st.plan.groups:
        states = published_states(st, record, g)
        out.update({j: model_weights(states[j]) for j in st.plan.honest(g)})
    return out


def digests(st: TrainedState, thetas: Mapping[int, Weights]) -> tuple[dict[str, str], dict[str, str]]:
    """(worker digests, group digests) of a version's weights."""
    return model_digests(st.plan, thetas)


# ----- shard stores -----------------------------------------------------------------------------------
def store_dir(data: ShardSource) -> str:
    """A trained state's worker keeps its shard in a store directory (plans made without one have none)."""
    if data.store_path is None:
        raise StateDirError("this plan's workers have no store directories: open the state with open_state()")
    return data.store_path


def store_problems(st: TrainedState, pending: Collection[str] = frozenset(),
                   workers: Collection[int] | None = None) -> dict[int, str]:
    """Each worker store that disagrees with the ledger, and how. Reads only (never repairs).

    Ids in ``pending`` (journaled, not yet applied) may be missing from a store's log. ``workers``: audit
    only their stores (a request audits the stores it touches; opening a deployment and ``verify`` audit
    every store)."""
    chosen = sorted(st.plan.shards) if workers is None else sorted(j for j in set(workers) if j in st.plan.shards)
    hashes = st.ledger.store_hashes(chosen)
    pending = set(pending)
    problems: dict[int, str] = {}
    for j in chosen:
        data = st.plan.shards[j]
        rows = ShardStore.rows_file(store_dir(data))
        if not rows.is_file():
            problems[j] = "missing (store directory or rows.npz lost)"
            continue
        try:
            logged = ShardStore.read_tombstones(store_dir(data), repair=False)
        except CorruptStoreError as exc:
            problems[j] = f"tombstone log unreadable ({exc})"
            continue
        want = st.deleted_from(j)
        extra, missing = sorted(logged - want), sorted(want - logged - pending)
        if extra or missing:
            problems[j] = "tombstone log differs from the ledger: " + "; ".join(
                part for part in (f"ids the ledger never deleted: {', '.join(extra[:10])}" if extra else "",
                                  f"deleted ids missing: {', '.join(missing[:10])}" if missing else "") if part)
            continue
        if not want <= logged:
            problems[j] = "pending: tombstones of a journaled request not yet written"
            continue
        if file_sha256(rows) != hashes.get(j):
            problems[j] = "rows.npz differs from the sha256 recorded in the ledger"
    return problems


def stored_ids(st: TrainedState) -> dict[int, np.ndarray]:
    """The ids in each worker's rows.npz as it is on disk (read-only; unreadable stores are left out:
    ``store_problems`` reports them)."""
    out = {}
    for j, data in sorted(st.plan.shards.items()):
        rows = ShardStore.rows_file(store_dir(data))
        if not rows.is_file():
            continue
        try:
            with np.load(rows, allow_pickle=False) as archive:
                out[j] = archive["ids"]
        except Exception:  # noqa: BLE001 - any unreadable file is the same finding
            continue
    return out


def live_ids(stored: Mapping[int, np.ndarray], ids: Collection[str]) -> dict[int, list[str]]:
    """Ids of ``ids`` present in some store of ``stored`` (from :func:`stored_ids`), by worker."""
    if not ids:
        return {}
    query = np.asarray(sorted(ids), dtype=str)
    hits = {j: query[np.isin(query, found)].tolist() for j, found in stored.items()}
    return {j: h for j, h in hits.items() if h}


def sync_stores(st: TrainedState, live: Backend | None = None, *, workers: Collection[int] | None = None,
                tolerate_dead_workers: bool = False) -> list[str]:
    """Make the stores agree with the ledger: append the tombstones of journaled requests, and
    rebuild a lost or damaged store from the source data minus the ledger's ids; then the started
    workers of ``live`` whose store changed re-read it (``tolerate_dead_workers``: a worker that
    cannot be reached is logged, not raised). Returns the repairs.

    ``workers``: only their stores and those holding ids of unfinished requests (a request touches its
    own stores; None: every store, as when a deployment starts)."""
    repairs = []
    unfinished = st.ledger.requests(unfinished_only=True)
    pending = {i for r in unfinished for i in r.ids}
    if workers is not None:
        workers = set(workers) | {st.deletions[i].worker for i in pending if i in st.deletions}
    chosen = st.plan.shards if workers is None else [j for j in workers if j in st.plan.shards]
    hashes = st.ledger.store_hashes(chosen)
    changed = []
    for j, problem in store_problems(st, pending, chosen).items():
        data = st.plan.shards[j]
        assert data.store_path is not None  # a state directory's workers keep durable stores
        want = st.deleted_from(j)
        if problem.startswith("pending") and file_sha256(ShardStore.rows_file(data.store_path)) == hashes.get(j):
            store = ShardStore.open(data.store_path)
            store.delete(sorted(want - store.deleted()))
        else:
            log.warning("store of worker %d: %s; rebuilding it from the source data minus the ledger's %d "
                        "deleted id(s)",
                        j, problem, len(want))
            try:
                rows = read_shard(data)  # its own rows of the source (checked against the recorded digest)
            except SourceRowsChanged as exc:
                raise SourceChangedError(f"worker {j}: {exc}") from None
            ShardStore.rebuild(data.store_path, rows.ids, rows.features, rows.labels, rows.slices, want)
            repairs.append(f"store of worker {j} rebuilt from the ledger ({problem})")
        st.ledger.set_store_hashes({j: file_sha256(ShardStore.rows_file(data.store_path))})
        changed.append(j)
        faults.point(f"deletion.tombstoned:worker-{j}")
    if live is not None and changed:
        try:
            live.call(sorted(changed), Worker.reopen_store)
        except Exception as exc:
            if not tolerate_dead_workers:
                raise
            log.warning("a live worker could not re-read its store: %s", exc)
    return repairs


# ----- checkpoints ------------------------------------------------------------------------------------
def checkpoint_problems(st: TrainedState) -> dict[tuple[int, int], str]:
    _, record = st.ledger.latest_version()
    problems = {}
    for key, info in sorted(record.checkpoints.items()):
        g, s = (int(x) for x in key.split("/"))
        problem = st.checkpoints.check(g, s, info.sha256)
        if problem:
            problems[(g, s)] = problem
    return problems


def approximate_problems(st: TrainedState) -> dict[int, str]:
    """Each group whose published approximate model file is missing or differs from its recorded sha256."""
    _, record = st.ledger.latest_version()
    problems = {}
    for g, model in sorted(record.approximate_models.items()):
        problem = st.checkpoints.approximate_problem(model)
        if problem:
            problems[int(g)] = problem
    return problems


# ----- state.json and certificates --------------------------------------------------------------------
def state_json_problems(st: TrainedState) -> list[str]:
    path = os.path.join(st.state_dir, STATE_JSON)
    try:
        with open(path) as fh:
            found = json.load(fh)
    except FileNotFoundError:
        return ["state.json is missing"]
    except ValueError as exc:
        return [f"state.json is not valid JSON ({exc})"]
    expected = derived_state(st.ledger)
    return [f"state.json {key}: {_short(found.get(key))} != ledger {_short(value)}"
            for key, value in expected.items() if found.get(key) != value]


def _short(value: object) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."
