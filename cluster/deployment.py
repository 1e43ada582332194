"""A warm cluster: a trained state directory held open, its workers started once, deletions queued.

``Deployment`` owns the state directory's lock (command ``serve``) and one worker thread. The
thread opens the state, starts the backend once (on Ray the actors stay alive between requests),
finishes whatever an earlier process left unfinished, then takes the queue: every PENDING exact
operation at once, coalesced into ONE ledger request for the union of their fresh ids, replayed on
the live workers (checkpoints restored into them; no actor is started), and marked SUCCEEDED with
that request's certificate. Only that thread touches the backend and the ledger's request steps;
API threads submit to the journal (``operations.py``) and read the published model it caches.

A replay that keeps failing (a worker dying every attempt) is rolled back before anything is
published: the ledger request is abandoned, the stores agree with the ledger again, and the
operations FAIL with the reason.
"""

from __future__ import annotations

import logging
import os
import json
import threading
import time
from contextlib import ExitStack
from typing import Callable, Iterator, Mapping

import numpy as np

from . import faults, statedir
from .ensemble import predict_with_probabilities
from .errors import PreconditionError, RequestError
from .ledger import DONE, JOURNALED, TOMBSTONED, ledger_path
from .operations import (FAILED, PENDING, RUNNING, SUCCEEDED, ClusterStatus, Journal, NotPendingAnymore, Operation,
                         WorkerStatus, mark_running, transition)
from .training import served_worker

log = logging.getLogger(__name__)

APPROXIMATE_MODES = ("approximate", "approximate_then_exact")
HOLD_ENV = "OSTRACON_TEST_HOLD_REPLAY_WHILE"  # tests and drills: a path; each replay round waits while it exists
HOLD_POLL_S = 0.05

__all__ = ["ClusterStatus", "Deployment", "Operation", "WorkerStatus"]


class _Interrupted(BaseException):
    """``close(drain=False)`` stops a running replay: it is left for the next start to finish."""


class Deployment:
    """A trained state directory served warm; see the module docstring."""

    def __init__(self, state_dir, *, config_path=None, overrides: Mapping | None = None,
                 max_ids_per_request: int = 10_000,
                 on_round: Callable[[int, object], None] | None = None):
        self.state_dir = os.fspath(state_dir)
        self.config_path = None if config_path is None else os.fspath(config_path)
        self.overrides = dict(overrides or {})
        self.max_ids_per_request = int(max_ids_per_request)
        self.on_round = on_round  # tests: called each replay round with (t, backend), e.g. to kill an actor
        self.backend_name = ""
        self.input_shape: tuple = ()
        self._stack: ExitStack | None = None
        self._journal: Journal | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._wake = threading.Event()
        self._paused = threading.Lock()  # held around each batch; tests hold it to queue several operations
        self._stopping = False
        self._abort = False
        self._accepting = False
        self._error: BaseException | None = None
        self._live = None
        self._model: tuple[int, list, list, str] | None = None  # (version, specs, thetas, vote): swapped whole
        self._workers: tuple = ()
        self._incarnations: dict[int, str] = {}
        self._plan = None

    # ----- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Lock the directory, train first if it holds nothing and a config was given, start the
        workers, finish unfinished work, and start taking the queue."""
        if self._thread is not None:
            raise PreconditionError("this deployment was already started")
        if self.config_path is not None and not _has_state(self.state_dir):
            self._train_first()
        statedir.require_state(self.state_dir)
        stack = ExitStack()
        stack.enter_context(statedir.exclusive(self.state_dir, "serve"))
        self._stack = stack
        try:
            self._thread = threading.Thread(target=self._serve, name="ostracon-deployment", daemon=True)
            self._thread.start()
            self._ready.wait()
            if self._error is not None:
                raise self._error
            self._accepting = True
        except BaseException:
            self.close(drain=False)
            raise

    def _train_first(self) -> None:
        from .config import load
        from .training import train

        config = load(self.config_path, self.overrides)
        log.info("%s holds no trained state: training %s into it first", self.state_dir, self.config_path)
        train(config, self.state_dir, progress=False)

    def close(self, drain: bool = True) -> None:
        """Stop accepting; finish (``drain``) or leave for the next start the running operation; stop
        the worker thread and the backend; release the lock. Pending operations stay queued."""
        self._accepting = False
        self._stop_thread(drain)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def _stop_thread(self, drain: bool) -> None:
        self._stopping = True
        self._abort = not drain
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "Deployment":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._error is None and self._live is not None \
            and self._thread is not None and self._thread.is_alive()

    # ----- the worker thread -----------------------------------------------------------------------
    def _serve(self) -> None:
        from .unlearning import open_state
        from .unlearning.exact import start_workers
        from .unlearning.state import sync_stores

        st = None
        try:
            st = open_state(self.state_dir, self.overrides)
            st.ledger.ensure_schema()
            self._journal = Journal(ledger_path(self.state_dir))
            self._plan = st.plan
            self.input_shape = tuple(st.plan.specs[0].input_shape)
            for repair in sync_stores(st):  # the workers build from the stores: make them agree first
                log.warning("before starting the workers: %s", repair)
            self._live = start_workers(st)
            self.backend_name = self._live.backend.name
            self._probe_workers()
            self._recover(st)
            self._cache_model(st)
        except BaseException as exc:  # noqa: BLE001 - handed to start(), which raises it
            self._error = exc
            self._shutdown(st)
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stopping:
                if not self._journal.count(PENDING):
                    self._wake.wait()
                    self._wake.clear()
                    continue
                with self._paused:
                    self._process_batch(st)
        except _Interrupted:
            log.warning("deployment closed without draining: the running operation resumes at the next start")
        except BaseException as exc:  # noqa: BLE001 - a bug or an injected crash: stop serving, keep the journal
            self._error = exc
            log.exception("the deployment's worker thread stopped")
        finally:
            self._shutdown(st)

    def _shutdown(self, st) -> None:
        if self._live is not None:
            self._live.backend.shutdown()
        if st is not None:
            st.close()

    def _recover(self, st) -> None:
        """Finish the ledger's unfinished requests and settle the operations they carried."""
        from .unlearning import recover

        for cert in recover(st, live=self._live, on_round=self._round_hook):
            self._succeed(st, self._journal.carried_by(cert["request_id"]), cert["request_id"])
        steps = {r.id: r.step for r in st.ledger.requests()}
        for op in self._journal.in_state(RUNNING):
            rid = self._journal.request_id(op.id)
            if rid is not None and steps.get(rid) == DONE:  # crashed between the ledger's last step and this
                self._succeed(st, [op], rid)
            elif rid is None:
                self._journal.update([op.id], state=PENDING, message="queued again after a restart")

    def _process_batch(self, st) -> None:
        """Take the queue: the oldest PENDING operation if it is approximate (one at a time), else every
        PENDING exact operation, coalesced into one ledger request for their fresh ids; carry it out, settle."""
        ops = self._journal.in_state(PENDING)
        if not ops:
            return
        if ops[0].mode in APPROXIMATE_MODES:
            return self._process_approximate(st, ops[0])
        ops = [op for op in ops if op.mode not in APPROXIMATE_MODES]
        requested = sorted({i for op in ops for i in op.sample_ids})
        fresh = [i for i in requested if i not in st.deletions]
        version, _ = st.ledger.latest_version()
        if not fresh:
            self._journal.update([op.id for op in ops], state=SUCCEEDED, progress=1.0, model_version=version,
                                 message="nothing to delete: every id was already deleted")
            return
        op_ids = [op.id for op in ops]
        message = f"replaying: {len(fresh)} id(s) from {len(ops)} operation(s)"
        try:
            request = st.ledger.journal(requested, {i: st.plan.placement[i] for i in fresh}, "exact",
                                        also=lambda db, rid: mark_running(db, op_ids, rid, message))
        except NotPendingAnymore:
            return  # one was cancelled meanwhile: nothing was journaled, take the queue again
        finally:
            self._journal.notify()
        faults.point("deletion.journaled")
        st.refresh()
        from .unlearning.exact import run_request

        self._carry_out(st, ops, request.id, lambda: run_request(
            st, request, live=self._live, on_round=self._round_hook,
            on_stage=lambda stage, first, last: self._progress(op_ids, stage, first, last)))

    def _process_approximate(self, st, op) -> None:
        """One approximate-mode operation: journal it, then the gated update (exact if it fails the gate;
        approximate_then_exact: its approximate version is served as soon as it is published)."""
        from .unlearning.approximate import carry_out

        fresh = [i for i in op.sample_ids if i not in st.deletions]
        version, _ = st.ledger.latest_version()
        if not fresh:
            self._journal.update([op.id], state=SUCCEEDED, progress=1.0, model_version=version,
                                 message="nothing to delete: every id was already deleted")
            return
        method = op.method or st.config.unlearning.method
        message = f"approximate update ({method}): {len(fresh)} id(s)"
        try:
            request = st.ledger.journal(list(op.sample_ids), {i: st.plan.placement[i] for i in fresh}, op.mode,
                                        also=lambda db, rid: mark_running(db, [op.id], rid, message))
        except NotPendingAnymore:
            return
        finally:
            self._journal.notify()
        faults.point("deletion.journaled")

        def published_approximately(version: int) -> None:
            self._cache_model(st)  # Predict serves the approximate version while the replay runs
            self._journal.update([op.id], progress=0.5, model_version=version,
                                 message=f"approximate version {version} published; exact replay running")

        self._carry_out(st, [op], request.id, lambda: carry_out(
            st, request, method, st.config.unlearning.method_params(method), live=self._live,
            on_round=self._round_hook, began=time.perf_counter(), on_published=published_approximately,
            on_stage=lambda stage, first, last: self._progress([op.id], stage, first, last)))

    def _carry_out(self, st, ops, request_id: int, work) -> None:
        """Run ``work`` (a journaled request's remaining steps); settle ``ops`` with its certificate, or roll
        back and fail them if it failed before anything was published."""
        from .unlearning.exact import abandon_request

        op_ids = [op.id for op in ops]
        try:
            cert = work()
        except (_Interrupted, faults.InjectedFault):
            raise
        except Exception as exc:  # noqa: BLE001 - the replay failed: roll back what was not published
            step = next(r.step for r in st.ledger.requests() if r.id == request_id)
            if step not in (JOURNALED, TOMBSTONED):
                raise  # published: only derived files (or the exact phase) are left, the next start finishes them
            reason = f"deletion failed, nothing was published: {exc}"
            log.error("request %d: %s", request_id, reason)
            abandon_request(st, request_id, self._live,
                            also=lambda db: [transition(db, i, state=FAILED, message=reason) for i in op_ids])
            self._journal.notify()
            self._probe_workers()
            return
        self._probe_workers()  # before the operations settle: a client that sees SUCCEEDED sees the restarts too
        self._succeed(st, ops, request_id, cert)

    def _succeed(self, st, ops, request_id: int, cert: dict | None = None) -> None:
        if cert is None:
            cert = self._certificate_of(st.ledger, request_id)
        self._cache_model(st)
        version = int(cert["model_version_after"])
        how = "approximately" if cert["mode"] == "approximate" else "exactly"
        phases = cert.get("phases") or [{}]
        if str(phases[0].get("outcome", "")).startswith("rolled back"):
            how = "exactly (the approximate update was rolled back: see the certificate's phases)"
        self._journal.update([op.id for op in ops if op.state != SUCCEEDED], state=SUCCEEDED, progress=1.0,
                             model_version=version,
                             message=f"deleted {len(cert['deleted'])} id(s) {how} in request {request_id}; "
                                     f"model version {version}")

    def _progress(self, op_ids, stage: int, first: int, last: int) -> None:
        done = (stage - first + 1) / (last - first + 1)
        self._journal.update(op_ids, progress=round(0.95 * done, 4), message=f"replayed stage {stage} of {last}")

    def _round_hook(self, t: int, backend) -> None:
        self._hold_while_requested()
        if self._abort:
            raise _Interrupted()
        if self.on_round is not None:
            self.on_round(t, backend)

    def _hold_while_requested(self) -> None:
        """Pause the replay while the file named by ``$OSTRACON_TEST_HOLD_REPLAY_WHILE`` exists, so a
        subprocess drill can queue operations behind a RUNNING one deterministically (never set in production)."""
        hold = os.environ.get(HOLD_ENV)
        while hold and os.path.exists(hold) and not self._abort:
            time.sleep(HOLD_POLL_S)

    def _cache_model(self, st) -> None:
        from .unlearning.exact import final_thetas

        version, record = st.ledger.latest_version()
        thetas = final_thetas(st, record)
        served = [served_worker(st.plan, g) for g in st.plan.groups]
        self._model = (version, [st.plan.specs[j] for j in served], [thetas[j] for j in served],
                       st.config.unlearning.vote)

    def _probe_workers(self) -> None:
        """Refresh the cached worker status (the worker thread owns the backend; status() reads this)."""
        backend, plan = self._live.backend, self._plan
        everyone = [s.index for s in plan.specs]
        alive: dict[int, bool] = {}
        try:
            now = backend.call(everyone, "incarnation")
            alive = {j: True for j in everyone}
        except Exception:  # noqa: BLE001 - a worker that cannot answer is reported dead
            now = {}
        nodes = {}
        if backend.name == "ray":
            try:
                nodes = backend.call(everyone, "node_id")
            except Exception:  # noqa: BLE001
                nodes = {}
        rows = []
        previous = {w.index: w for w in self._workers}
        for spec in plan.specs:
            j = spec.index
            restarts = previous[j].restarts if j in previous else 0
            if j in now and j in self._incarnations and now[j] != self._incarnations[j]:
                restarts += 1
            if j in now:
                self._incarnations[j] = now[j]
            rows.append(WorkerStatus(j, spec.group, spec.is_byzantine, alive.get(j, False), restarts,
                                     str(nodes.get(j, "local" if backend.name == "local" else ""))))
        self._workers = tuple(rows)

    # ----- the API -----------------------------------------------------------------------------------
    def _require_running(self) -> Journal:
        if not self._accepting or self._journal is None:
            raise PreconditionError("the deployment is not running (not started, or closing)")
        return self._journal

    def delete(self, ids: list[str], mode: str = "exact", method: str = "", idempotency_key: str = "") -> Operation:
        """Validate, then commit a PENDING operation (or return the one ``idempotency_key`` names)."""
        from .unlearning.requests import validate_request

        from ostracon.nodes.approximate_params import PARAMS

        mode = "exact" if mode in ("", "unspecified") else mode
        if mode not in ("exact",) + APPROXIMATE_MODES:
            raise RequestError(f"mode: unknown deletion mode {mode!r}; choose exact, approximate or "
                               "approximate_then_exact")
        if mode == "exact" and method:
            raise RequestError(f"method: exact deletion takes no method (got {method!r})")
        if method and method not in PARAMS:
            raise RequestError(f"method: unknown approximate-unlearning method {method!r}; choose one of: "
                               f"{', '.join(PARAMS)}")
        if not isinstance(idempotency_key, str):
            raise RequestError("idempotency_key: must be a string")
        journal = self._require_running()
        ids = list(ids)
        if not ids:
            raise RequestError("sample_ids: empty deletion request: give at least one sample id")
        bad = [repr(i) for i in ids if not isinstance(i, str) or not i]
        if bad:
            raise RequestError(f"sample_ids: sample ids must be non-empty strings, got: {', '.join(bad[:20])}")
        ids = list(dict.fromkeys(ids))  # a request is a set of ids
        if len(ids) > self.max_ids_per_request:
            raise RequestError(f"sample_ids: {len(ids)} ids exceed max_ids_per_request = {self.max_ids_per_request}")
        validate_request(ids, self._plan.placement, set(), self._plan.test_ids.tolist())
        op, created = journal.submit(ids, mode, method, idempotency_key)
        if created:
            self._wake.set()
        return op

    def operation(self, op_id: str) -> Operation:
        return self._journal_or_fail().get(_op_id(op_id))

    def operations(self, page_size: int = 50, page_token: str = "") -> tuple[list[Operation], str]:
        return self._journal_or_fail().page(page_size, page_token)

    def cancel(self, op_id: str) -> Operation:
        journal = self._journal_or_fail()
        op = journal.cancel(_op_id(op_id))
        if op is None:
            state = journal.get(op_id).state
            raise PreconditionError(f"operation {op_id} is {state}: only a PENDING operation can be cancelled")
        return op

    def watch(self, op_id: str, after_sequence: int = 0, timeout: float | None = None
              ) -> Iterator[tuple[int, Operation]]:
        """Stored events after ``after_sequence``, then live ones, until the final state; ``timeout``
        bounds each wait for the next event (the iterator ends when it passes)."""
        journal = self._journal_or_fail()
        op_id = _op_id(op_id)
        journal.get(op_id)  # unknown -> OperationNotFoundError before the first next()
        return self._watch(journal, op_id, int(after_sequence), timeout)

    @staticmethod
    def _watch(journal: Journal, op_id: str, after: int, timeout: float | None) -> Iterator[tuple[int, Operation]]:
        while True:
            seen = journal.generation
            events = journal.events(op_id, after)
            for sequence, op in events:
                yield sequence, op
                after = sequence
                if op.done:
                    return
            if journal.get(op_id).done and not journal.events(op_id, after):
                return
            if not journal.wait_for_change(seen, timeout):
                return

    def certificate(self, op_id: str) -> dict:
        """The certificate covering ``op_id`` (shared by the operations coalesced with it)."""
        journal = self._journal_or_fail()
        op = journal.get(_op_id(op_id))
        if op.state != SUCCEEDED:
            raise PreconditionError(f"operation {op.id} is {op.state}: a certificate exists once it SUCCEEDED")
        rid = journal.request_id(op.id)
        if rid is None:
            return {"kind": "ostracon.deletion_certificate/v1", "mode": op.mode, "status": "noop",
                    "operation_id": op.id, "requested": list(op.sample_ids), "already_deleted": list(op.sample_ids),
                    "deleted": [], "model_version": op.model_version}
        body = journal.certificate_body(rid)
        if body is None:
            raise PreconditionError(f"operation {op.id}: request {rid} has no certificate yet")
        return json.loads(body)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(labels int64 (n,), probabilities float32 (n, C), model_version) of the published version."""
        if self._model is None:
            raise PreconditionError("the deployment is not running")
        if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
            raise RequestError(f"inputs: dtype must be float32 or float64, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim != 1 + len(self.input_shape) or tuple(x.shape[1:]) != self.input_shape:
            raise RequestError(f"inputs: shape must be (n, {', '.join(map(str, self.input_shape))}), "
                               f"got {tuple(x.shape)}")
        version, specs, thetas, vote = self._model
        labels, probabilities = predict_with_probabilities(specs, thetas, x, vote)
        return labels, probabilities, version

    def status(self) -> ClusterStatus:
        journal = self._journal_or_fail()
        version = self._model[0] if self._model else 0
        return ClusterStatus(self._workers, version, journal.count(PENDING), self.backend_name)

    def _journal_or_fail(self) -> Journal:
        if self._journal is None:
            raise PreconditionError("the deployment is not running (not started, or closed)")
        return self._journal

    def _certificate_of(self, ledger, request_id: int) -> dict:
        body = next(b for _, (rid, _, b) in ledger.certificates().items() if rid == request_id)
        return json.loads(body)


def _op_id(op_id: str) -> str:
    if not isinstance(op_id, str) or not op_id:
        raise RequestError("operation_id: give an operation id (e.g. op-000001)")
    return op_id


def _has_state(state_dir: str) -> bool:
    return any(os.path.exists(os.path.join(state_dir, n)) for n in ("config.json", "ledger.sqlite",
                                                                   statedir.INCOMPLETE_FILE))

