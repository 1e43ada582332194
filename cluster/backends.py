"""Execution backends: where the workers run.

The training and unlearning protocols are written once against this small
interface; ``LocalBackend`` runs every worker in this process (the
reference), ``RayBackend`` (in ``ray_backend.py``) runs one actor per worker.

A *vector handle* is what ``step``/``attack`` return for each worker that
answered: the array itself here, an ``ObjectRef`` on Ray. Handles are passed
back in ``incoming`` messages (``("mix", [handles])`` or ``("set", handle)``)
and resolved on the receiving side, so vectors never transit the driver
unless it asks (``fetch``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from ostracon.nodes.shard_store import ShardStore
from ostracon.nodes.worker import NO_ANSWER, Worker, WorkerSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerData:
    """How a worker finds its shard: rows to build it from, and a directory to keep it durable (or None)."""

    ids: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    slices: np.ndarray
    store_path: str | None = None


def build_worker(spec: WorkerSpec, data: WorkerData) -> Worker:
    # from_arrays re-applies the tombstone log when store_path already holds a store, so a rebuilt
    # (restarted) worker never sees a deleted sample again.
    store = ShardStore.from_arrays(data.ids, data.features, data.labels, data.slices, path=data.store_path)
    return Worker(spec, store)


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
    name: str

    def start(self, specs: Sequence[WorkerSpec], data: Mapping[int, WorkerData]) -> None: ...

    def step(self, workers: Sequence[int], stage: int, step: int, t: int,
             incoming: Mapping[int, Any], deadline_s: float | None) -> StepResult: ...

    def attack(self, workers: Sequence[int], honest: Sequence[Any], t: int) -> StepResult: ...

    def call(self, workers: Sequence[int], method: str, *args: Any) -> dict[int, Any]: ...

    def call_each(self, calls: Mapping[int, tuple]) -> dict[int, Any]: ...

    def fetch(self, handles: Sequence[Any]) -> list[np.ndarray]: ...

    def put(self, array: np.ndarray) -> Any: ...

    def shutdown(self) -> None: ...


class LocalBackend:
    """Every worker in this process: the reference implementation, fast for tests."""

    name = "local"

    def __init__(self) -> None:
        self.workers: dict[int, Worker] = {}

    def start(self, specs: Sequence[WorkerSpec], data: Mapping[int, WorkerData]) -> None:
        for spec in specs:
            self.workers[spec.index] = build_worker(spec, data[spec.index])

    def step(self, workers, stage, step, t, incoming, deadline_s=None) -> StepResult:
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

    def attack(self, workers, honest, t) -> StepResult:
        result = StepResult()
        for j in workers:
            vector = self.workers[j].attack(list(honest), t)
            if vector is None:
                result.failures[j] = NO_ANSWER
            else:
                result.vectors[j] = vector
        return result

    def call(self, workers, method, *args) -> dict[int, Any]:
        return self.call_each({j: (method, *args) for j in workers})

    def call_each(self, calls) -> dict[int, Any]:
        return {j: getattr(self.workers[j], method)(*args) for j, (method, *args) in calls.items()}

    def fetch(self, handles) -> list[np.ndarray]:
        return list(handles)

    def put(self, array: np.ndarray) -> Any:
        return array

    def shutdown(self) -> None:
        self.workers.clear()


def make_backend(config) -> Backend:
    """The backend named by ``config.backend.name``."""
    if config.backend.name == "local":
        return LocalBackend()
    from .ray_backend import RayBackend

    return RayBackend(config)
