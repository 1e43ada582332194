"""The coordinator's journal of deletion operations, kept in the state directory's ledger.

Two tables of ``ledger.sqlite`` (so one transaction can change an operation and the ledger request
that carries it): ``operations`` (one row per accepted deletion: its ids, idempotency key, state,
progress, the ledger request that carries it) and ``operation_events`` (every change of an
operation, numbered 1, 2, 3, ... per operation: what ``watch`` replays). An operation is committed
(WAL, ``synchronous=FULL``) before ``Deployment.delete`` returns it.

States: PENDING -> RUNNING -> SUCCEEDED | FAILED, or PENDING -> CANCELLED (and PENDING ->
SUCCEEDED when every id was already deleted). The mark RUNNING is written in the same transaction
as the ledger request, so after any crash an operation is PENDING (not in the ledger), RUNNING with
a request the ledger finishes, or final.

Operation ids are ``op-`` and a sequence number, zero-padded to six digits (``op-000001``; from a million
on they simply grow: ``op-1000000``). Everything that orders operations (oldest first for the worker
thread, newest first for :meth:`Journal.page` and its tokens) orders by that NUMBER, never by the id's
text, through an index on the number (created when a journal opens, so older ledgers gain it too); the
queue and a request's operations are found through indexes on the state and the request id.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import IdempotencyConflictError, OperationNotFoundError, RequestError
from ..unlearning.requests import shown
from ..vocabulary import DeletionMode, OperationState

T = TypeVar("T")

# The sequence number of an operation id ("op-1000000" -> 1000000): what every ORDER BY and page token uses
# (the text order would put op-1000000 between op-100000 and op-100001). Indexed as this exact expression.
NUMBER = "CAST(substr(id, 4) AS INTEGER)"
_INDEX = f"CREATE INDEX IF NOT EXISTS operations_by_number ON operations({NUMBER})"
# The worker thread's queue (PENDING, RUNNING) and a request's operations are found through these, whatever the
# history (docs/design.md, invariant 9).
_INDEXES = (_INDEX, "CREATE INDEX IF NOT EXISTS operations_by_state ON operations(state)",
            "CREATE INDEX IF NOT EXISTS operations_by_request ON operations(request_id)")
_TOKEN = re.compile(r"op-[0-9]{1,18}")
MAX_PAGE_SIZE = 1000  # a larger page_size is served as this many (AIP-158: coerced, not refused)
DEFAULT_PAGE_SIZE = 50  # page_size 0 (unset)

_COLUMNS = ("id, state, progress, message, sample_ids, create_time, update_time, model_version, mode, method, "
            "request_id")


@dataclass(frozen=True)
class Operation:
    """One deletion operation as the API shows it; ``model_version`` is the version it published (0 until then)."""

    id: str
    state: OperationState
    progress: float
    message: str
    sample_ids: tuple[str, ...]
    create_time: float
    update_time: float
    model_version: int
    mode: DeletionMode
    method: str

    @property
    def done(self) -> bool:
        return self.state.is_final


def body_sha256(ids: Iterable[str], mode: DeletionMode, method: str) -> str:
    """What idempotency compares: the SET of ids, the effective mode and the method."""
    body = {"ids": sorted(set(ids)), "mode": mode.value, "method": method}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _operation(row: tuple[Any, ...]) -> Operation:
    op_id, state, progress, message, ids, created, updated, version, mode, method, _ = row
    return Operation(op_id, OperationState(state), float(progress), message, tuple(json.loads(ids)), float(created),
                     float(updated), int(version), DeletionMode(mode), method)


def _snapshot(op: Operation) -> str:
    """An event keeps what changes (the ids live in the operation row: events stay small)."""
    return json.dumps({"state": op.state.value, "progress": op.progress, "message": op.message,
                       "model_version": op.model_version, "update_time": op.update_time}, sort_keys=True)


def _read(db: sqlite3.Connection, op_id: str) -> Operation:
    row = db.execute(f"SELECT {_COLUMNS} FROM operations WHERE id = ?", (op_id,)).fetchone()
    if row is None:
        raise OperationNotFoundError(f"no operation {op_id!r}")
    return _operation(row)


def transition(db: sqlite3.Connection, op_id: str, *, state: OperationState | None = None,
               progress: float | None = None,
               message: str | None = None, model_version: int | None = None,
               request_id: int | None = None) -> Operation:
    """Change one operation and append its event, inside the caller's transaction."""
    old = _read(db, op_id)
    now = time.time()
    new = Operation(old.id, state or old.state, old.progress if progress is None else float(progress),
                    old.message if message is None else message, old.sample_ids, old.create_time, now,
                    old.model_version if model_version is None else int(model_version), old.mode, old.method)
    db.execute("UPDATE operations SET state = ?, progress = ?, message = ?, model_version = ?, update_time = ?, "
               "request_id = COALESCE(?, request_id) WHERE id = ?",
               (new.state.value, new.progress, new.message, new.model_version, now, request_id, op_id))
    _append_event(db, new)
    return new


def _append_event(db: sqlite3.Connection, op: Operation) -> int:
    (last,) = db.execute("SELECT COALESCE(MAX(sequence), 0) FROM operation_events WHERE op_id = ?", (op.id,)).fetchone()
    db.execute("INSERT INTO operation_events(op_id, sequence, snapshot, time) VALUES (?, ?, ?, ?)",
               (op.id, last + 1, _snapshot(op), op.update_time))
    return last + 1


class Journal:
    """A connection to the operations tables, shared by the API threads and the deployment's worker
    thread (serialised by a lock); every committed change wakes :meth:`wait_for_change`."""

    def __init__(self, ledger_path: str):
        # Its own connection: the worker thread's ledger connection writes the same file (WAL).
        self._db = sqlite3.connect(ledger_path, isolation_level=None, check_same_thread=False, timeout=60.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        for index in _INDEXES:  # ledgers written before the indexes existed gain them here
            self._db.execute(index)
        self._lock = threading.RLock()
        self._changed = threading.Condition()
        self._generation = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ----- transactions and change notification ---------------------------------------------------
    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = work(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        self.notify()
        return out

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def notify(self) -> None:
        """Wake every watcher (called after any committed change, also by other connections' writers)."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    @property
    def generation(self) -> int:
        return self._generation

    def wait_for_change(self, seen: int, timeout: float | None) -> bool:
        """Block until a change after generation ``seen`` (or ``timeout``); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._generation != seen, timeout)

    # ----- submitting -------------------------------------------------------------------------------
    def submit(self, ids: Sequence[str], mode: DeletionMode, method: str,
               idempotency_key: str) -> tuple[Operation, bool]:
        """Commit a new PENDING operation (event 1), or return the one ``idempotency_key`` already
        names when its body is the same; returns (operation, created)."""
        digest = body_sha256(ids, mode, method)
        key = idempotency_key or None

        def work(db: sqlite3.Connection) -> tuple[Operation, bool]:
            if key is not None:
                row = db.execute("SELECT id, body_sha256 FROM operations WHERE idempotency_key = ?", (key,)).fetchone()
                if row is not None:
                    if row[1] != digest:
                        raise IdempotencyConflictError(
                            f"idempotency_key {key!r} was used by operation {row[0]} with a different request body "
                            "(other sample ids, mode or method)")
                    return _read(db, row[0]), False
            (last,) = db.execute(f"SELECT COALESCE(MAX({NUMBER}), 0) FROM operations").fetchone()
            now = time.time()
            op = Operation(f"op-{last + 1:06d}", OperationState.PENDING, 0.0, "queued", tuple(ids), now, now, 0, mode,
                           method)
            db.execute("INSERT INTO operations(id, idempotency_key, body_sha256, mode, method, sample_ids, state, "
                       "progress, message, model_version, request_id, create_time, update_time) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                       (op.id, key, digest, mode.value, method, json.dumps(list(ids)), op.state.value, op.progress,
                        op.message,
                        op.model_version, now, now))
            _append_event(db, op)
            return op, True

        return self._transaction(work)

    # ----- reading ----------------------------------------------------------------------------------
    def get(self, op_id: str) -> Operation:
        with self._lock:
            return _read(self._db, op_id)

    def request_id(self, op_id: str) -> int | None:
        rows = self._query("SELECT request_id FROM operations WHERE id = ?", (op_id,))
        if not rows:
            raise OperationNotFoundError(f"no operation {op_id!r}")
        return None if rows[0][0] is None else int(rows[0][0])

    def certificate_body(self, request_id: int) -> str | None:
        """The ledger's copy of a request's certificate (None before it is published)."""
        rows = self._query("SELECT body FROM certificates WHERE request_id = ?", (request_id,))
        return str(rows[0][0]) if rows else None

    def in_state(self, *states: OperationState) -> list[Operation]:
        """Operations in ``states``, oldest first."""
        marks = ", ".join("?" for _ in states)
        return [_operation(r) for r in self._query(f"SELECT {_COLUMNS} FROM operations WHERE state IN ({marks}) "
                                                   f"ORDER BY {NUMBER}", tuple(s.value for s in states))]

    def carried_by(self, request_id: int) -> list[Operation]:
        return [_operation(r) for r in self._query(f"SELECT {_COLUMNS} FROM operations WHERE request_id = ? "
                                                   f"ORDER BY {NUMBER}", (request_id,))]

    def count(self, state: OperationState) -> int:
        return int(self._query("SELECT COUNT(*) FROM operations WHERE state = ?", (state.value,))[0][0])

    def page(self, page_size: int, page_token: str, max_page_size: int = MAX_PAGE_SIZE) -> tuple[list[Operation], str]:
        """Newest first (by sequence number); the token is the id of the last operation of the previous page.
        ``page_size`` 0 or less: :data:`DEFAULT_PAGE_SIZE`; above ``max_page_size``: that many."""
        if page_token and not _TOKEN.fullmatch(page_token):
            raise RequestError(f"page_token: {shown(page_token, 40)} is not a token this server issued")
        size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(int(page_size), max_page_size)
        sql = f"SELECT {_COLUMNS} FROM operations"
        args: tuple[Any, ...] = ()
        if page_token:
            sql += f" WHERE {NUMBER} < ?"
            args = (int(page_token[3:]),)
        rows = self._query(sql + f" ORDER BY {NUMBER} DESC LIMIT ?", args + (size + 1,))
        ops = [_operation(r) for r in rows[:size]]
        return ops, (ops[-1].id if len(rows) > size else "")

    def events(self, op_id: str, after_sequence: int) -> list[tuple[int, Operation]]:
        """Stored events of ``op_id`` with a sequence above ``after_sequence``, in order."""
        base = self.get(op_id)
        rows = self._query("SELECT sequence, snapshot FROM operation_events WHERE op_id = ? AND sequence > ? "
                           "ORDER BY sequence", (op_id, int(after_sequence)))
        out = []
        for sequence, snapshot in rows:
            s = json.loads(snapshot)
            out.append((int(sequence), Operation(base.id, OperationState(s["state"]), float(s["progress"]),
                                                 s["message"],
                                                 base.sample_ids, base.create_time, float(s["update_time"]),
                                                 int(s["model_version"]), base.mode, base.method)))
        return out

    # ----- changing ---------------------------------------------------------------------------------
    def update(self, op_ids: Iterable[str], **changes: Any) -> list[Operation]:
        """Apply the same change (see :func:`transition`) to every operation of ``op_ids``, in one transaction."""
        ids = list(op_ids)
        if not ids:
            return []
        return self._transaction(lambda db: [transition(db, i, **changes) for i in ids])

    def cancel(self, op_id: str) -> Operation | None:
        """PENDING -> CANCELLED; None when the operation is in another state (nothing changed)."""

        def work(db: sqlite3.Connection) -> Operation | None:
            op = _read(db, op_id)
            if op.state is not OperationState.PENDING:
                return None
            return transition(db, op_id, state=OperationState.CANCELLED, message="cancelled before it started")

        return self._transaction(work)


class NotPendingAnymore(Exception):
    """An operation left PENDING (it was cancelled) while the worker thread was picking it up."""


def mark_running(db: sqlite3.Connection, op_ids: Sequence[str], request_id: int, message: str) -> None:
    """Inside the ledger transaction that journals ``request_id``: its operations are now RUNNING."""
    for op_id in op_ids:
        if _read(db, op_id).state is not OperationState.PENDING:
            raise NotPendingAnymore(op_id)  # rolls the ledger request back too
        transition(db, op_id, state=OperationState.RUNNING, progress=0.0, message=message, request_id=request_id)
