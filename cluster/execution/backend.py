"""The backend seam: where the workers run (docs/design.md, "Seams").

Training and unlearning are written once against :class:`Backend`. :class:`LocalBackend` runs every
worker in this process (the reference, fast for tests); ``RayBackend`` (``ray_backend.py``) runs one
actor per worker. ``tests/test_backend_contract.py`` runs one suite of tests against both.

- Rounds: :meth:`Backend.step` has each listed worker apply its message and take one local step;
  :meth:`Backend.attack` has attackers answer the honest vectors. Both return a :class:`StepResult`
  of *vector handles* (the array itself here, an ``ObjectRef`` on Ray) and why the others are absent.
  Handles travel back inside :class:`~ostracon.nodes.messages.Mix`/``Assign`` messages and are
  resolved on the receiving side, so vectors never transit the driver unless it asks (``fetch``).
- Control: :meth:`Backend.call` runs a function on each listed worker, ``fn(worker, *args)``, and
  returns the results by worker index (as Ray Train's ``WorkerGroup.execute(fn, *args)``); pass
  :class:`~ostracon.nodes.worker.Worker` methods (``Worker.get_state``), never their names.
- Lifecycle: whoever starts a backend owns it (``with backend:`` or ``shutdown()``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from ostracon.nodes.messages import Message
from ostracon.nodes.shard_store import CorruptStoreError, ShardStore
from ostracon.nodes.sources import ShardSource, read_shard, release
from ostracon.nodes.sources import SourceChangedError as SourceRowsChanged
from ostracon.nodes.worker import NO_ANSWER, Worker, WorkerSpec

from ..config import Config
from ..errors import DataError, SourceChangedError

log = logging.getLogger(__name__)

R = TypeVar("R")
LOCAL_NODE = "local"  # what LocalBackend reports as every worker's node


def open_store(shard: ShardSource) -> ShardStore:
    """A worker's store: opened from its directory when it holds one (its tombstone log re-applied, and
    any id of ``shard.deleted`` it lacks tombstoned), else built from the worker's own rows of the source
    minus ``shard.deleted``: a lost or unreadable store is rebuilt by its worker, and a rebuilt (restarted)
    worker never sees a deleted sample again."""
    if shard.store_path is not None and ShardStore.rows_file(shard.store_path).is_file():
        try:
            store = ShardStore.open(shard.store_path)
        except CorruptStoreError as exc:
            log.warning("store %s unreadable (%s): rebuilding it from the source", shard.store_path, exc)
        else:
            missing = sorted(set(shard.deleted) - store.deleted())
            if missing:
                store.delete(missing)
            return store
    rows = read_shard(shard)
    if shard.store_path is None:
        return ShardStore.from_arrays(rows.ids, rows.features, rows.labels, rows.slices)
    return ShardStore.rebuild(shard.store_path, rows.ids, rows.features, rows.labels, rows.slices, shard.deleted)


def build_worker(spec: WorkerSpec, shard: ShardSource) -> Worker:
    """A worker over its own rows (``open_store``); the source is read by the worker, never shipped to it.
    A source that cannot be read, or whose rows changed since training, is a one-line error naming it."""
    try:
        store = open_store(shard)
    except SourceRowsChanged as exc:
        raise SourceChangedError(f"worker {spec.index}: {exc}") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"worker {spec.index} reading its rows of {shard.source.describe()}: {exc}") from exc
    return Worker(spec, store, shard)


# Why a worker's vector is missing from a round (``StepResult.failures``). LATE and BUSY depend on
# timing, so training records them in the schedule; DIED makes the protocol redo the group's stage.
LATE = "missed deadline"  # it ran the step, but answered after the round's deadline
BUSY = "busy: previous round still running"  # its previous step was late: this one was not sent
DIED = "actor died"


@dataclass
class StepResult:
    """Vector handles of the workers that answered, and why the others did not (``NO_DATA``,
    ``NO_ANSWER`` from the worker itself; ``LATE``, ``BUSY``, ``DIED`` from the backend)."""

    vectors: dict[int, Any] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)


class Backend(Protocol):
    """Where the workers run. Every method takes global worker indices; see the module docstring."""

    name: str  # for display only ("local", "ray"): nothing branches on it

    def start(self, specs: Sequence[WorkerSpec], shards: Mapping[int, ShardSource]) -> None:
        """Build one worker per spec, each reading its rows from ``shards[spec.index]``; fails
        (ClusterError) if one cannot start."""

    def step(self, workers: Sequence[int], stage: int, step: int, t: int,
             incoming: Mapping[int, Message | None], deadline_s: float | None) -> StepResult:
        """Each worker applies ``incoming[j]`` then takes local step ``step`` of ``stage`` (global round ``t``)."""

    def attack(self, workers: Sequence[int], honest: Sequence[Any], t: int, budget: int | None = None) -> StepResult:
        """Each attacker answers the round's honest vector handles, against a rule with fault ``budget``."""

    def deliver(self, messages: Mapping[int, Message]) -> None:
        """Apply pending messages without a step (the end of a stage: parameters become final)."""

    def call(self, workers: Sequence[int], fn: Callable[..., R], *args: Any) -> dict[int, R]:
        """``fn(worker, *args)`` on each worker; results by index. Waits for a restarting worker."""

    def call_each(self, fn: Callable[..., R], args: Mapping[int, tuple[Any, ...]]) -> dict[int, R]:
        """``fn(worker, *args[j])`` on each worker ``j`` of ``args``."""

    def fetch(self, handles: Sequence[Any]) -> list[np.ndarray]:
        """The arrays behind vector handles (the driver reads them: use sparingly)."""

    def put(self, array: np.ndarray) -> Any:
        """A handle for an array the driver made (the parameter server's new model)."""

    def nodes(self, workers: Sequence[int]) -> dict[int, str]:
        """The node each worker runs on (for status)."""

    def kill(self, worker: int) -> None:
        """Kill a worker's process (fault drills); a backend that can restarts it."""

    def shutdown(self) -> None:
        """Stop every worker; the backend cannot be used again."""

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...


class LocalBackend:
    """Every worker in this process: the reference implementation, fast for tests."""

    name = "local"

    def __init__(self) -> None:
        self.workers: dict[int, Worker] = {}

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def start(self, specs: Sequence[WorkerSpec], shards: Mapping[int, ShardSource]) -> None:
        try:
            for spec in specs:
                self.workers[spec.index] = build_worker(spec, shards[spec.index])
        finally:
            release()  # the workers of this process shared one read of a built-in source

    def step(self, workers: Sequence[int], stage: int, step: int, t: int,
             incoming: Mapping[int, Message | None], deadline_s: float | None = None) -> StepResult:
        result = StepResult()
        for j in workers:
            began = time.perf_counter()
            vector = self.workers[j].step(stage, step, t, incoming.get(j))
            if vector is None:
                result.failures[j] = self.workers[j].last_status
            elif deadline_s and time.perf_counter() - began > deadline_s:
                # It answered, but too late for this round: the others mix without it.
                result.failures[j] = LATE
            else:
                result.vectors[j] = vector
        return result

    def attack(self, workers: Sequence[int], honest: Sequence[Any], t: int, budget: int | None = None) -> StepResult:
        result = StepResult()
        for j in workers:
            vector = self.workers[j].attack(list(honest), t, budget)
            if vector is None:
                result.failures[j] = NO_ANSWER
            else:
                result.vectors[j] = vector
        return result

    def deliver(self, messages: Mapping[int, Message]) -> None:
        for j, message in messages.items():
            self.workers[j].receive(message)

    def call(self, workers: Sequence[int], fn: Callable[..., R], *args: Any) -> dict[int, R]:
        return {j: fn(self.workers[j], *args) for j in workers}

    def call_each(self, fn: Callable[..., R], args: Mapping[int, tuple[Any, ...]]) -> dict[int, R]:
        return {j: fn(self.workers[j], *a) for j, a in args.items()}

    def fetch(self, handles: Sequence[Any]) -> list[np.ndarray]:
        return list(handles)

    def put(self, array: np.ndarray) -> Any:
        return array

    def nodes(self, workers: Sequence[int]) -> dict[int, str]:
        return dict.fromkeys(workers, LOCAL_NODE)

    def kill(self, worker: int) -> None:
        raise NotImplementedError("the local backend runs every worker in this process: it cannot kill one")

    def shutdown(self) -> None:
        self.workers.clear()
        release()


BACKENDS = ("local", "ray")


def make_backend(config: Config) -> Backend:
    """The backend named by ``config.backend.name`` (not started)."""
    if config.backend.name == "local":
        return LocalBackend()
    from .ray_backend import RayBackend

    return RayBackend(config)
