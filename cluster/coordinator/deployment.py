"""A warm cluster: a trained state directory held open, its workers started once, deletions queued.

``Deployment`` owns the state directory's lock (command ``serve``) and one worker thread. The
thread opens the state, starts the backend once (on Ray the actors stay alive between requests),
finishes whatever an earlier process left unfinished, then takes the queue: every PENDING exact
operation at once, coalesced into ONE ledger request for the union of their fresh ids, replayed on
the live workers (checkpoints restored into them; no actor is started), and marked SUCCEEDED with
that request's certificate. Only that thread touches the backend and the ledger's request steps;
API threads submit to the journal (:mod:`.journal`) and read the published model it caches. Requests
take the same path as the command line's (:func:`ostracon.cluster.unlearning.execute.execute`); the
deployment adds its :class:`~ostracon.cluster.execution.hooks.Hooks` (progress, drills, serving the
approximate version early) and the operations' bookkeeping. A request touches its own groups' stores
(every store is audited once, at start), and the files for people to read (``summary.json``,
``metrics.jsonl``, ``accuracy.png``) are rewritten once per burst of deletions, when the queue is empty
(docs/design.md, invariant 9).

A replay that keeps failing (a worker dying every attempt) is rolled back before anything is
published: the ledger request is abandoned, the stores agree with the ledger again, and the
operations FAIL with the reason.

Every input is bounded before any work (docs/design.md, invariant 5); each refusal is a
:class:`~ostracon.cluster.unlearning.requests.LimitExceededError` (a ``RequestError``) whose message
starts with the field and names the limit. The limits are constructor arguments (``ostracon serve``
flags); the defaults are the ``DEFAULT_*`` constants below.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np

from ostracon.nodes.worker import Weights, Worker, WorkerSpec

from .. import faults
from ..config import load
from ..errors import ConfigError, PreconditionError, RequestError
from ..execution.backend import Backend
from ..execution.ensemble import predict_with_probabilities
from ..execution.hooks import Hooks
from ..execution.plan import RunPlan
from ..execution.training import served_worker, train
from ..storage import statedir
from ..storage.ledger import ledger_path
from ..storage.outputs import SUMMARY_JSON
from ..storage.records import Certificate, NothingToDelete
from ..unlearning.exact import LiveWorkers, abandon_request, recover, refresh_outputs, start_workers
from ..unlearning.execute import execute
from ..unlearning.requests import (
    DeletionRequest,
    LimitExceededError,
    UnlearningError,
    parse_request,
    shown,
    validate_request,
)
from ..unlearning.trained import TrainedState, final_thetas, open_state, sync_stores
from ..vocabulary import DeletionMode, OperationState, PhaseOutcome, RequestStep
from .journal import MAX_PAGE_SIZE, Journal, NotPendingAnymore, Operation, mark_running, transition
from .status import ClusterStatus, WorkerStatus

log = logging.getLogger(__name__)

HOLD_ENV = "OSTRACON_TEST_HOLD_REPLAY_WHILE"  # tests and drills: a path; each replay round waits while it exists
HOLD_POLL_S = 0.05

# Input limits (docs: README, "Limits"); each is a Deployment argument and an `ostracon serve` flag.
DEFAULT_MAX_IDS_PER_REQUEST = 10_000  # sample_ids of one Delete, counted as given (duplicates included)
DEFAULT_MAX_ID_CHARS = 256  # characters of one sample id
DEFAULT_MAX_IDEMPOTENCY_KEY_CHARS = 256  # characters of an idempotency key
DEFAULT_MAX_PREDICT_ROWS = 4096  # rows (samples) of one Predict
DEFAULT_MAX_PREDICT_BYTES = 16 * 1024 * 1024  # bytes of one Predict's inputs (as decoded)
MAX_OPERATION_ID_CHARS = 32  # op- and a sequence number; anything longer is no operation id

__all__ = ["ClusterStatus", "Deployment", "Operation", "WorkerStatus"]


class _Interrupted(BaseException):
    """``close(drain=False)`` stops a running replay: it is left for the next start to finish."""


class _OperationHooks(Hooks):
    """The deployment's hooks on a request's work: progress of its operations, the test hold, stopping
    without draining, serving an approximate version as soon as it is published, and the caller's
    ``on_round`` (tests kill actors there)."""

    def __init__(self, deployment: Deployment, st: TrainedState, op_ids: Sequence[str]):
        self.deployment, self.st, self.op_ids = deployment, st, list(op_ids)

    def on_round(self, t: int, backend: Backend) -> None:
        self.deployment._round(t, backend)

    def on_stage(self, stage: int, first: int, last: int) -> None:
        done = (stage - first + 1) / (last - first + 1)
        self.deployment._journal_or_fail().update(self.op_ids, progress=round(0.95 * done, 4),
                                                  message=f"replayed stage {stage} of {last}")

    def on_published(self, version: int) -> None:
        self.deployment._cache_model(self.st)  # Predict serves the approximate version while the replay runs
        self.deployment._journal_or_fail().update(
            self.op_ids, progress=0.5, model_version=version,
            message=f"approximate version {version} published; exact replay running")


class Deployment:
    """A trained state directory served warm; see the module docstring."""

    def __init__(self, state_dir: str | os.PathLike[str], *, config_path: str | os.PathLike[str] | None = None,
                 overrides: Mapping[str, Any] | None = None, max_ids_per_request: int = DEFAULT_MAX_IDS_PER_REQUEST,
                 hooks: Hooks | None = None, max_id_chars: int = DEFAULT_MAX_ID_CHARS,
                 max_idempotency_key_chars: int = DEFAULT_MAX_IDEMPOTENCY_KEY_CHARS,
                 max_predict_rows: int = DEFAULT_MAX_PREDICT_ROWS, max_predict_bytes: int = DEFAULT_MAX_PREDICT_BYTES,
                 max_page_size: int = MAX_PAGE_SIZE):
        self.state_dir = os.fspath(state_dir)
        self.config_path = None if config_path is None else os.fspath(config_path)
        self.overrides = dict(overrides or {})
        self.max_ids_per_request = _limit("max_ids_per_request", max_ids_per_request)
        self.max_id_chars = _limit("max_id_chars", max_id_chars)
        self.max_idempotency_key_chars = _limit("max_idempotency_key_chars", max_idempotency_key_chars)
        self.max_predict_rows = _limit("max_predict_rows", max_predict_rows)
        self.max_predict_bytes = _limit("max_predict_bytes", max_predict_bytes)
        self.max_page_size = _limit("max_page_size", max_page_size)
        self.hooks = hooks or Hooks()  # tests: on_round(t, backend) each replay round, e.g. to kill an actor
        self.backend_name = ""
        self.input_shape: tuple[int, ...] = ()
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
        self._live: LiveWorkers | None = None
        # (version, specs, thetas, vote) of the served model: swapped whole, read by API threads
        self._model: tuple[int, list[WorkerSpec], list[Weights], str] | None = None
        self._workers: tuple[WorkerStatus, ...] = ()
        self._incarnations: dict[int, str] = {}
        self._plan: RunPlan | None = None
        self._outputs_pending: int | None = None  # published deleted ids of outputs not yet rewritten

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
        assert self.config_path is not None
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

    def __enter__(self) -> Deployment:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._error is None and self._live is not None \
            and self._thread is not None and self._thread.is_alive()

    # ----- the worker thread -----------------------------------------------------------------------
    def _serve(self) -> None:
        st = None
        try:
            st = open_state(self.state_dir, self.overrides)
            st.ledger.ensure_schema()
            journal = self._journal = Journal(ledger_path(self.state_dir))
            self._plan = st.plan
            self.input_shape = tuple(st.plan.specs[0].input_shape)
            for repair in sync_stores(st):  # the workers build from the stores: make them agree first
                log.warning("before starting the workers: %s", repair)
            self._live = start_workers(st)
            self._live.outputs = lambda deleted, st=st: self._outputs_after_request(st, deleted)
            self.backend_name = self._live.backend.name
            self._probe_workers()
            self._recover(st)
            self._cache_model(st)
            if _outputs_behind(self.state_dir, st):  # a crash after a request's last step, before its outputs
                refresh_outputs(st, st.published_count())
        except BaseException as exc:  # noqa: BLE001 - handed to start(), which raises it
            self._error = exc
            self._shutdown(st)
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stopping:
                if not journal.count(OperationState.PENDING):
                    self._write_pending_outputs(st)  # the queue is empty: a burst of deletions is drawn once
                    self._wake.wait()
                    self._wake.clear()
                    continue
                with self._paused:
                    self._process_batch(st)
        except _Interrupted:
            log.warning("deployment closed without draining: the running operation resumes at the next start")
        except BaseException as exc:
            self._error = exc
            log.exception("the deployment's worker thread stopped")
        finally:
            self._shutdown(st)

    def _shutdown(self, st: TrainedState | None) -> None:
        if self._live is not None:
            self._live.backend.shutdown()
        if st is not None:
            self._write_pending_outputs(st)
            st.close()

    def _recover(self, st: TrainedState) -> None:
        """Finish the ledger's unfinished requests and settle the operations they carried."""
        journal = self._journal_or_fail()
        for cert in recover(st, live=self._live, hooks=_OperationHooks(self, st, [])):
            self._succeed(st, journal.carried_by(cert.request_id), cert)
        for op in journal.in_state(OperationState.RUNNING):
            rid = journal.request_id(op.id)
            # crashed after the ledger's last step
            if rid is not None and st.ledger.request_step(rid) is RequestStep.DONE:
                self._succeed(st, [op], self._certificate_of(st, rid))
            elif rid is None:
                journal.update([op.id], state=OperationState.PENDING, message="queued again after a restart")

    def _outputs_after_request(self, st: TrainedState, deleted_samples: int) -> None:
        """``LiveWorkers.outputs``: after a request, rewrite ``summary.json``, ``metrics.jsonl`` and
        ``accuracy.png`` (every version, the plot redrawn) now if the queue is empty, else once it is: a
        burst of deletions pays for them once, and a client that sees its operation SUCCEEDED with nothing
        queued sees them current."""
        self._outputs_pending = deleted_samples
        if not self._journal_or_fail().count(OperationState.PENDING):
            self._write_pending_outputs(st)

    def _write_pending_outputs(self, st: TrainedState) -> None:
        if self._outputs_pending is None:
            return
        try:
            refresh_outputs(st, self._outputs_pending)
        except Exception:  # files for people, derived from the ledger: the next request rewrites them
            log.exception("could not rewrite summary.json, metrics.jsonl and accuracy.png")
        self._outputs_pending = None

    def _process_batch(self, st: TrainedState) -> None:
        """Take the queue: the oldest PENDING operation if it is approximate (one at a time), else every
        PENDING exact operation, coalesced into one ledger request for the union of their ids; carry it
        out, settle."""
        ops = self._journal_or_fail().in_state(OperationState.PENDING)
        if not ops:
            return
        if ops[0].mode.is_approximate:
            ops = ops[:1]
            request = DeletionRequest(ops[0].sample_ids, ops[0].mode, ops[0].method or None)
            what = f"approximate update ({ops[0].method or st.config.unlearning.method})"
        else:
            ops = [op for op in ops if not op.mode.is_approximate]
            request = DeletionRequest(tuple(sorted({i for op in ops for i in op.sample_ids})), DeletionMode.EXACT)
            what = f"replaying ({len(ops)} operation(s))"
        self._carry_out(st, ops, request, what)

    def _carry_out(self, st: TrainedState, ops: Sequence[Operation], request: DeletionRequest, what: str) -> None:
        """Journal ``request`` for ``ops`` (marked RUNNING in the same transaction) and carry it out; settle
        ``ops`` with its certificate, or roll back and fail them if it failed before anything was published."""
        journal = self._journal_or_fail()
        op_ids = [op.id for op in ops]
        journaled: list[int] = []
        message = f"{what}: {sum(1 for i in request.ids if i not in st.deletions)} id(s)"

        def running(db: sqlite3.Connection, request_id: int) -> None:
            mark_running(db, op_ids, request_id, message)
            journaled.append(request_id)

        try:
            outcome = execute(st, request, live=self._live, hooks=_OperationHooks(self, st, op_ids), also=running)
        except (_Interrupted, faults.InjectedFault):
            raise
        except NotPendingAnymore:
            return  # one was cancelled meanwhile: nothing was journaled, take the queue again
        except Exception as exc:  # noqa: BLE001 - the work failed: roll back what was not published
            self._fail(st, op_ids, journaled[0] if journaled else None, exc)
            return
        finally:
            journal.notify()
        if isinstance(outcome, NothingToDelete):
            journal.update(op_ids, state=OperationState.SUCCEEDED, progress=1.0, model_version=outcome.model_version,
                           message="nothing to delete: every id was already deleted")
            return
        self._probe_workers()  # before the operations settle: a client that sees SUCCEEDED sees the restarts too
        self._succeed(st, ops, outcome)

    def _fail(self, st: TrainedState, op_ids: Sequence[str], request_id: int | None, exc: Exception) -> None:
        """A request failed: if nothing of it was published, roll it back and fail its operations."""
        journal = self._journal_or_fail()
        reason = f"deletion failed, nothing was published: {exc}"
        if request_id is None:  # failed before journaling: nothing to roll back
            log.error("%s", reason)
            journal.update(op_ids, state=OperationState.FAILED, message=reason)
            return
        request = st.ledger.request(request_id)
        if not request.step.can_abandon:
            raise exc  # published: only derived files (or the exact phase) are left, the next start finishes them
        log.error("request %d: %s", request_id, reason)

        def failed(db: sqlite3.Connection) -> None:
            for op_id in op_ids:
                transition(db, op_id, state=OperationState.FAILED, message=reason)

        abandon_request(st, request_id, self._live, also=failed)
        journal.notify()
        self._probe_workers()

    def _succeed(self, st: TrainedState, ops: Sequence[Operation], cert: Certificate) -> None:
        self._cache_model(st)
        version = cert.model_version_after
        how = "approximately" if cert.mode is DeletionMode.APPROXIMATE else "exactly"
        if cert.phases and str(cert.phases[0].get("outcome", "")).startswith(PhaseOutcome.ROLLED_BACK):
            how = "exactly (the approximate update was rolled back: see the certificate's phases)"
        self._journal_or_fail().update(
            [op.id for op in ops if op.state is not OperationState.SUCCEEDED], state=OperationState.SUCCEEDED,
            progress=1.0, model_version=version,
            message=f"deleted {len(cert.deleted)} id(s) {how} in request {cert.request_id}; model version {version}")

    def _round(self, t: int, backend: Backend) -> None:
        """Every round of a request's work: the test hold, stopping without draining, the caller's hooks."""
        self._hold_while_requested()
        if self._abort:
            raise _Interrupted()
        self.hooks.on_round(t, backend)

    def _hold_while_requested(self) -> None:
        """Pause the replay while the file named by ``$OSTRACON_TEST_HOLD_REPLAY_WHILE`` exists, so a
        subprocess drill can queue operations behind a RUNNING one deterministically (never set in production)."""
        hold = os.environ.get(HOLD_ENV)
        while hold and os.path.exists(hold) and not self._abort:
            time.sleep(HOLD_POLL_S)

    def _cache_model(self, st: TrainedState) -> None:
        version, record = st.ledger.latest_version()
        thetas = final_thetas(st, record)
        served = [served_worker(st.plan, g) for g in st.plan.groups]
        self._model = (version, [st.plan.specs[j] for j in served], [thetas[j] for j in served],
                       st.config.unlearning.vote)

    def _probe_workers(self) -> None:
        """Refresh the cached worker status (the worker thread owns the backend; status() reads this)."""
        assert self._live is not None and self._plan is not None
        backend, plan = self._live.backend, self._plan
        everyone = [s.index for s in plan.specs]
        alive: dict[int, bool] = {}
        now: dict[int, str] = {}
        try:
            now = backend.call(everyone, Worker.incarnation)
            alive = dict.fromkeys(everyone, True)
        except Exception:  # noqa: BLE001 - a worker that cannot answer is reported dead
            now = {}
        nodes: dict[int, str] = {}
        try:
            nodes = backend.nodes(everyone)
        except Exception:  # noqa: BLE001 - unknown placement is reported as ""
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
                                     str(nodes.get(j, ""))))
        self._workers = tuple(rows)

    # ----- the API -----------------------------------------------------------------------------------
    def _require_running(self) -> Journal:
        if not self._accepting or self._journal is None:
            raise PreconditionError("the deployment is not running (not started, or closing)")
        return self._journal

    def delete(self, ids: Sequence[str], mode: str | DeletionMode = DeletionMode.EXACT, method: str = "",
               idempotency_key: str = "") -> Operation:
        """Validate, then commit a PENDING operation (or return the one ``idempotency_key`` names).

        The bounds come first, each in O(1) or one pass over the ids: the key's length, the number of ids
        as given (10M copies of one id are refused before anything walks them), each id's length."""
        if not isinstance(idempotency_key, str):
            raise RequestError("idempotency_key: must be a string")
        if len(idempotency_key) > self.max_idempotency_key_chars:
            raise LimitExceededError(f"idempotency_key: {len(idempotency_key)} characters exceed "
                                     f"max_idempotency_key_chars = {self.max_idempotency_key_chars}",
                                     "idempotency_key")
        journal = self._require_running()
        assert self._plan is not None
        try:  # the command line's validator; a request is a set of ids here
            request = parse_request(ids, mode or DeletionMode.EXACT, method or None,
                                    max_ids=self.max_ids_per_request, merge_duplicates=True,
                                    max_id_chars=self.max_id_chars)
        except UnlearningError as exc:
            raise exc.in_field() from None
        validate_request(request.ids, self._plan.placement, set(), self._plan.test_ids)
        op, created = journal.submit(request.ids, request.mode, request.method or "", idempotency_key)
        if created:
            self._wake.set()
        return op

    def operation(self, op_id: str) -> Operation:
        return self._journal_or_fail().get(_op_id(op_id))

    def operations(self, page_size: int = 50, page_token: str = "") -> tuple[list[Operation], str]:
        """Newest first; ``page_size`` above ``max_page_size`` is served as ``max_page_size`` (AIP-158)."""
        return self._journal_or_fail().page(page_size, page_token, self.max_page_size)

    def cancel(self, op_id: str) -> Operation:
        journal = self._journal_or_fail()
        op_id = _op_id(op_id)
        op = journal.cancel(op_id)
        if op is None:
            state = journal.get(op_id).state.value
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

    def certificate(self, op_id: str) -> Certificate | NothingToDelete:
        """The certificate covering ``op_id`` (shared by the operations coalesced with it)."""
        journal = self._journal_or_fail()
        op = journal.get(_op_id(op_id))
        if op.state is not OperationState.SUCCEEDED:
            raise PreconditionError(f"operation {op.id} is {op.state}: a certificate exists once it "
                                    f"{OperationState.SUCCEEDED}")
        rid = journal.request_id(op.id)
        if rid is None:
            return NothingToDelete(op.mode, op.sample_ids, op.model_version, operation_id=op.id)
        body = journal.certificate_body(rid)
        if body is None:
            raise PreconditionError(f"operation {op.id}: request {rid} has no certificate yet")
        return Certificate.from_json(body)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(labels int64 (n,), probabilities float32 (n, C), model_version) of the published version.

        Refused before any model work: another dtype or shape, more than ``max_predict_rows`` rows or
        ``max_predict_bytes`` bytes, and any NaN or infinite value."""
        if self._model is None:
            raise PreconditionError("the deployment is not running")
        if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
            raise RequestError(f"inputs: dtype must be float32 or float64, got {getattr(x, 'dtype', type(x).__name__)}")
        self.check_predict_size(x.shape[0] if x.ndim else 1, x.nbytes)
        if x.ndim != 1 + len(self.input_shape) or tuple(x.shape[1:]) != self.input_shape:
            raise RequestError(f"inputs: shape must be (n, {', '.join(map(str, self.input_shape))}), "
                               f"got {tuple(x.shape)}")
        if x.size and not np.isfinite(x).all():
            bad = np.flatnonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1))
            raise RequestError(f"inputs: {len(bad)} row(s) hold NaN or infinite values (first: row {int(bad[0])}); "
                               "send finite numbers")
        version, specs, thetas, vote = self._model
        labels, probabilities = predict_with_probabilities(specs, thetas, x, vote)
        return labels, probabilities, version

    def check_predict_size(self, rows: int, nbytes: int) -> None:
        """Refuse a Predict of more than ``max_predict_rows`` rows or ``max_predict_bytes`` bytes; callable
        before the inputs are decoded (the service checks the tensor's declared shape and byte length)."""
        if rows > self.max_predict_rows:
            raise LimitExceededError(f"inputs: {rows} rows exceed max_predict_rows = {self.max_predict_rows}; "
                                     "split the batch", "inputs")
        if nbytes > self.max_predict_bytes:
            raise LimitExceededError(f"inputs: {nbytes} bytes exceed max_predict_bytes = {self.max_predict_bytes}; "
                                     "split the batch", "inputs")

    def status(self) -> ClusterStatus:
        journal = self._journal_or_fail()
        version = self._model[0] if self._model else 0
        return ClusterStatus(self._workers, version, journal.count(OperationState.PENDING), self.backend_name)

    def _journal_or_fail(self) -> Journal:
        if self._journal is None:
            raise PreconditionError("the deployment is not running (not started, or closed)")
        return self._journal

    @staticmethod
    def _certificate_of(st: TrainedState, request_id: int) -> Certificate:
        found = st.ledger.certificate_of(request_id)
        if found is None:
            raise PreconditionError(f"request {request_id} is finished but the ledger holds no certificate for it")
        return Certificate.from_json(found[1])


def _op_id(op_id: str) -> str:
    if not isinstance(op_id, str) or not op_id:
        raise RequestError("operation_id: give an operation id (e.g. op-000001)")
    if len(op_id) > MAX_OPERATION_ID_CHARS:
        raise RequestError(f"operation_id: {shown(op_id, 40)} is no operation id (longer than "
                           f"{MAX_OPERATION_ID_CHARS} characters; ids look like op-000001)")
    return op_id


def _limit(name: str, value: int) -> int:
    """A limit given to :class:`Deployment`: a whole number, at least 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name}: {value!r} is not a limit; give a whole number, at least 1")
    return int(value)


def _outputs_behind(state_dir: str, st: TrainedState) -> bool:
    """Whether ``summary.json`` shows another model version than the ledger's latest (or is unreadable)."""
    try:
        with open(os.path.join(state_dir, SUMMARY_JSON)) as fh:
            shown_version = json.load(fh).get("model_version")
    except (OSError, ValueError, AttributeError):
        return True
    return bool(shown_version != st.ledger.latest_version()[0])


def _has_state(state_dir: str) -> bool:
    return any(os.path.exists(os.path.join(state_dir, n)) for n in ("config.json", "ledger.sqlite",
                                                                   statedir.INCOMPLETE_FILE))

