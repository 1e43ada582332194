"""What ``GetClusterStatus`` reports: each worker's liveness and placement, the served version, the queue."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerStatus:
    index: int
    group: int
    byzantine: bool
    alive: bool
    restarts: int  # times the worker came back with a new incarnation since the deployment started
    node: str  # the node it runs on (Ray's node id; "local" in-process)


@dataclass(frozen=True)
class ClusterStatus:
    workers: tuple[WorkerStatus, ...]
    model_version: int
    queue_depth: int  # PENDING operations
    backend: str
