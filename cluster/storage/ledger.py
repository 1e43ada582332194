"""The deletion ledger: the one durable record a state directory's truth derives from.

A SQLite database (``ledger.sqlite``, WAL, ``synchronous=FULL``) in the state directory. Every
change is one transaction, committed and synced before the files derived from it change:

``meta``        what was trained: config and source-data digests, the stage lengths, the state format
``requests``    every deletion request and the step it reached (``RequestStep``: journaled ->
                tombstoned -> published -> done); anything not final is finished by the next command
``deletions``   every deleted id with its placement (group, worker, slice) and its request
``versions``    every published model version: worker/group digests, checkpoint hashes, evaluation
``certificates`` each request's certificate, byte for byte (the file is written from here)
``store_files`` the sha256 of every shard store's ``rows.npz`` as last written
``schedule``    the timing-dependent events of training (a worker that missed a round's deadline or
                was still busy), replayed by every later replay and by ``verify``
``round_budgets`` each round's fault budget where silent workers spent part of it (meta
                ``silent_workers_spend_f``: absent in a ledger trained before they did)
``operations``  the coordinator's journal of deletion operations (``ostracon.cluster.coordinator.journal``), and
``operation_events`` their numbered state changes; an operation that reaches the ledger is linked to
                its request in the same transaction, so the two never disagree after a crash

Shard stores' tombstone logs, ``state.json`` and certificate files are derived from these rows and
checked against them; a derived file that is lost or damaged is rebuilt from the ledger, never
from the source data alone. A ledger that fails SQLite's integrity check stops everything.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import OstraconError
from ..vocabulary import DeletionMode, RequestStep
from .records import Certificate, Placement, Request, Schedule, VersionRecord

FILE = "ledger.sqlite"
FORMAT = 1
# meta key: true when silent workers spent the fault budget in training (and so in every replay)
SILENT_SPEND_KEY = "silent_workers_spend_f"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mode TEXT NOT NULL,
    step TEXT NOT NULL,
    requested TEXT NOT NULL,
    ids TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deletions (
    sample_id TEXT PRIMARY KEY,
    request_id INTEGER NOT NULL REFERENCES requests(id),
    grp INTEGER NOT NULL,
    worker INTEGER NOT NULL,
    slice INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY,
    request_id INTEGER,
    record TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    request_id INTEGER PRIMARY KEY REFERENCES requests(id),
    version INTEGER NOT NULL,
    name TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS store_files (worker INTEGER PRIMARY KEY, sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS schedule (
    grp INTEGER NOT NULL, stage INTEGER NOT NULL, round INTEGER NOT NULL, worker INTEGER NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (grp, stage, round, worker)
);
CREATE TABLE IF NOT EXISTS round_budgets (
    grp INTEGER NOT NULL, stage INTEGER NOT NULL, round INTEGER NOT NULL, f INTEGER NOT NULL,
    PRIMARY KEY (grp, stage, round)
);
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    body_sha256 TEXT NOT NULL,
    mode TEXT NOT NULL,
    method TEXT NOT NULL,
    sample_ids TEXT NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL,
    message TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    request_id INTEGER REFERENCES requests(id),
    create_time REAL NOT NULL,
    update_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS operation_events (
    op_id TEXT NOT NULL REFERENCES operations(id),
    sequence INTEGER NOT NULL,
    snapshot TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (op_id, sequence)
);
CREATE INDEX IF NOT EXISTS deletions_by_request ON deletions(request_id);
CREATE INDEX IF NOT EXISTS requests_by_step ON requests(step);
"""
# What a request reads is found through these indexes (docs/design.md, invariant 9: a request's cost follows
# its ids, not the history); a ledger written before them gains them in ``ensure_schema``.


class LedgerError(OstraconError, RuntimeError):
    """The ledger is missing, unreadable or inconsistent: nothing in the state directory can be trusted."""


@dataclass(frozen=True)
class Deletion:
    sample_id: str
    request_id: int
    group: int
    worker: int
    slice: int

    @property
    def placement(self) -> Placement:
        return Placement(self.group, self.worker, self.slice)


def _request(row: tuple[Any, ...]) -> Request:
    return Request(int(row[0]), DeletionMode(row[1]), RequestStep(row[2]), tuple(json.loads(row[3])),
                   tuple(json.loads(row[4])))


class Ledger:
    """One connection to a state directory's ledger; use :func:`create` or :func:`open_ledger`."""

    def __init__(self, path: str, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            else:
                self._db = sqlite3.connect(path, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise LedgerError("the ledger was opened read-only")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"ledger {self.path} is unreadable: {exc}") from None

    # ----- meta ------------------------------------------------------------------------------------
    def meta(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def set_meta(self, values: Mapping[str, object]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                           [(k, json.dumps(v, sort_keys=True)) for k, v in values.items()])

    # ----- requests and deletions ------------------------------------------------------------------
    def journal(self, requested: Sequence[str], placement: Mapping[str, Placement], mode: DeletionMode,
                also: Callable[[sqlite3.Connection, int], None] | None = None) -> Request:
        """Record a request and the ids it deletes, in one synced transaction: from here on it is
        acknowledged, and the next command finishes it if this one dies. ``also(db, request_id)``
        runs inside the same transaction (the coordinator links its operations to the request)."""
        now = time.time()
        ids = list(placement)
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO requests(mode, step, requested, ids, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
                (mode.value, RequestStep.JOURNALED.value, json.dumps(list(requested)), json.dumps(ids), now, now),
            )
            rid = int(cur.lastrowid or 0)
            db.executemany("INSERT INTO deletions(sample_id, request_id, grp, worker, slice) VALUES (?, ?, ?, ?, ?)",
                           [(i, rid, p.group, p.worker, p.slice) for i, p in placement.items()])
            if also is not None:
                also(db, rid)
        return Request(rid, mode, RequestStep.JOURNALED, tuple(requested), tuple(ids))

    def set_step(self, request_id: int, step: RequestStep) -> None:
        with self.transaction() as db:
            db.execute("UPDATE requests SET step = ?, updated = ? WHERE id = ?", (step.value, time.time(), request_id))

    def abandon(self, request_id: int, also: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Roll back an unpublished request (its replay kept failing): its ids are no longer deleted,
        and the stores' extra tombstones are repaired by the next ``sync_stores``."""
        with self.transaction() as db:
            row = db.execute("SELECT step FROM requests WHERE id = ?", (request_id,)).fetchone()
            if row is None or not RequestStep(row[0]).can_abandon:
                raise LedgerError(f"request {request_id} is {row[0] if row else 'unknown'}: only an unpublished "
                                  "request can be abandoned")
            db.execute("DELETE FROM deletions WHERE request_id = ?", (request_id,))
            db.execute("UPDATE requests SET step = ?, updated = ? WHERE id = ?",
                       (RequestStep.ABANDONED.value, time.time(), request_id))
            if also is not None:
                also(db)

    def requests(self, unfinished_only: bool = False) -> list[Request]:
        """Every request (``unfinished_only``: those not final, found through the ``step`` index), oldest first."""
        if unfinished_only:
            open_steps = [s.value for s in RequestStep if not s.is_final]
            marks = ", ".join("?" for _ in open_steps)
            rows = self._query(f"SELECT id, mode, step, requested, ids FROM requests WHERE step IN ({marks}) "
                               "ORDER BY id", tuple(open_steps))
        else:
            rows = self._query("SELECT id, mode, step, requested, ids FROM requests ORDER BY id")
        return [_request(r) for r in rows]

    def request(self, request_id: int) -> Request:
        rows = self._query("SELECT id, mode, step, requested, ids FROM requests WHERE id = ?", (request_id,))
        if not rows:
            raise LedgerError(f"ledger {self.path} has no request {request_id}")
        return _request(rows[0])

    def request_step(self, request_id: int) -> RequestStep | None:
        """The step request ``request_id`` reached; None when the ledger has no such request."""
        rows = self._query("SELECT step FROM requests WHERE id = ?", (request_id,))
        return RequestStep(rows[0][0]) if rows else None

    def deletions(self) -> dict[str, Deletion]:
        """Every id the ledger deletes (published or still being applied)."""
        rows = self._query("SELECT sample_id, request_id, grp, worker, slice FROM deletions")
        return {r[0]: Deletion(*r) for r in rows}

    def deletions_after(self, request_id: int) -> dict[str, Deletion]:
        """The ids deleted by requests numbered above ``request_id`` (request ids only grow): what a
        state that has read the deletions up to ``request_id`` is missing."""
        rows = self._query("SELECT sample_id, request_id, grp, worker, slice FROM deletions WHERE request_id > ?",
                           (request_id,))
        return {r[0]: Deletion(*r) for r in rows}

    # ----- versions and certificates ---------------------------------------------------------------
    def publish(self, request_id: int | None, version: int, record: VersionRecord,
                certificate: tuple[str, Certificate] | None, step: RequestStep = RequestStep.PUBLISHED) -> None:
        """Record a new model version (and the request's certificate) in one transaction: the commit
        point of a deletion. ``certificate`` is ``(file name, certificate)``, stored as its exact bytes;
        ``step`` is the request's step after it (``APPROXIMATED`` for the first phase of
        approximate_then_exact)."""
        with self.transaction() as db:
            db.execute("INSERT INTO versions(version, request_id, record, created) VALUES (?, ?, ?, ?)",
                       (version, request_id, record.to_json(), time.time()))
            if request_id is not None:
                if certificate is not None:
                    name, cert = certificate
                    db.execute("INSERT INTO certificates(request_id, version, name, body) VALUES (?, ?, ?, ?)",
                               (request_id, version, name, cert.to_json()))
                db.execute("UPDATE requests SET step = ?, updated = ? WHERE id = ?",
                           (step.value, time.time(), request_id))

    def latest_version(self) -> tuple[int, VersionRecord]:
        rows = self._query("SELECT version, record FROM versions ORDER BY version DESC LIMIT 1")
        if not rows:
            raise LedgerError(f"ledger {self.path} records no published model version")
        return int(rows[0][0]), VersionRecord.from_json(rows[0][1])

    def version_of(self, request_id: int) -> tuple[int, VersionRecord] | None:
        """The latest version a request published (its approximate phase, for approximate_then_exact)."""
        rows = self._query("SELECT version, record FROM versions WHERE request_id = ? ORDER BY version DESC LIMIT 1",
                           (request_id,))
        return (int(rows[0][0]), VersionRecord.from_json(rows[0][1])) if rows else None

    def versions(self) -> list[tuple[int, int | None, VersionRecord]]:
        return [(int(v), r, VersionRecord.from_json(rec)) for v, r, rec in
                self._query("SELECT version, request_id, record FROM versions ORDER BY version")]

    def full_retrain_cost(self) -> int:
        """Gradient evaluations of training from scratch (the first version's; read alone, not every version)."""
        rows = self._query("SELECT record FROM versions ORDER BY version LIMIT 1")
        if not rows:
            raise LedgerError(f"ledger {self.path} records no published model version")
        return VersionRecord.from_json(rows[0][0]).gradient_evaluations

    def certificates(self) -> dict[str, tuple[int, int, str]]:
        """File name -> (request id, version, exact body)."""
        return {name: (rid, v, body) for rid, v, name, body in
                self._query("SELECT request_id, version, name, body FROM certificates")}

    def certificate_of(self, request_id: int) -> tuple[str, str] | None:
        """(file name, exact body) of a request's certificate, None before it is published."""
        rows = self._query("SELECT name, body FROM certificates WHERE request_id = ?", (request_id,))
        return (rows[0][0], rows[0][1]) if rows else None

    # ----- derived files ---------------------------------------------------------------------------
    def store_hashes(self, workers: Collection[int] | None = None) -> dict[int, str]:
        """The recorded sha256 of each store's ``rows.npz`` (``workers``: only theirs)."""
        if workers is None:
            return {int(w): sha for w, sha in self._query("SELECT worker, sha256 FROM store_files")}
        chosen = sorted({int(w) for w in workers})
        if not chosen:
            return {}
        marks = ", ".join("?" for _ in chosen)
        return {int(w): sha for w, sha in
                self._query(f"SELECT worker, sha256 FROM store_files WHERE worker IN ({marks})", tuple(chosen))}

    def set_store_hashes(self, hashes: Mapping[int, str]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO store_files(worker, sha256) VALUES (?, ?)", list(hashes.items()))

    # ----- timing-dependent events -----------------------------------------------------------------
    def silent_spend(self) -> bool:
        """Whether training let silent workers spend the fault budget (False: a ledger trained before)."""
        return bool(self.meta(SILENT_SPEND_KEY, False))

    def schedule(self) -> Schedule:
        """What training recorded for replays: timing events and the rounds' fault budgets."""
        out = Schedule(silent_spend=self.silent_spend())
        for g, s, t, j, status in self._query("SELECT grp, stage, round, worker, status FROM schedule"):
            out.events.setdefault((g, s), {}).setdefault(t, {})[j] = status
        if self._has_table("round_budgets"):  # a ledger trained before budgets were recorded has none
            for g, s, t, f in self._query("SELECT grp, stage, round, f FROM round_budgets"):
                out.budgets.setdefault((g, s), {})[t] = f
        return out

    def set_schedule(self, schedule: Schedule) -> None:
        events = [(g, s, t, j, status) for (g, s), rounds in schedule.events.items()
                  for t, workers in rounds.items() for j, status in workers.items()]
        budgets = [(g, s, t, f) for (g, s), rounds in schedule.budgets.items() for t, f in rounds.items()]
        with self.transaction() as db:
            db.execute("DELETE FROM schedule")
            db.executemany("INSERT INTO schedule(grp, stage, round, worker, status) VALUES (?, ?, ?, ?, ?)", events)
            db.execute("DELETE FROM round_budgets")
            db.executemany("INSERT INTO round_budgets(grp, stage, round, f) VALUES (?, ?, ?, ?)", budgets)
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                       (SILENT_SPEND_KEY, json.dumps(schedule.silent_spend)))

    def _has_table(self, name: str) -> bool:
        return bool(self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def ensure_schema(self) -> None:
        """Create the tables a ledger written by an older ostracon lacks (the operations journal)."""
        self._db.executescript(_SCHEMA)

    def check(self) -> None:
        """SQLite's own consistency check plus this format's tables; raises :class:`LedgerError`."""
        result = self._query("PRAGMA quick_check")
        if [r[0] for r in result] != ["ok"]:
            raise LedgerError(f"ledger {self.path} failed its integrity check: {result[0][0]}")
        fmt = self.meta("format")
        if fmt != FORMAT:
            raise LedgerError(f"ledger {self.path} has format {fmt!r}; this ostracon reads format {FORMAT}")


def ledger_path(state_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(state_dir), FILE)


def create(state_dir: str | os.PathLike[str], meta: Mapping[str, object]) -> Ledger:
    path = ledger_path(state_dir)
    if os.path.exists(path):
        raise LedgerError(f"{path} already exists")
    # Created 0600 before SQLite opens it: its -wal and -shm files take the database file's mode.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    ledger = Ledger(path)
    ledger._db.executescript(_SCHEMA)
    ledger.set_meta({"format": FORMAT, "created": time.time(), **meta})
    return ledger


def open_ledger(state_dir: str | os.PathLike[str], readonly: bool = False) -> Ledger:
    """Open and check a state directory's ledger; a missing or corrupt one is a :class:`LedgerError`."""
    path = ledger_path(state_dir)
    if not os.path.isfile(path):
        raise LedgerError(f"{os.fspath(state_dir)} has no deletion ledger ({FILE}); it is not a state directory "
                          "written by this version of ostracon (train it again with `ostracon train -o`)")
    ledger = Ledger(path, readonly=readonly)
    try:
        ledger.check()
    except BaseException:
        ledger.close()
        raise
    return ledger

