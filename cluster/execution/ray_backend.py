"""The Ray backend: one actor per worker.

Vectors move through Ray's object store: each ``step`` returns its vector
as a separate object (one put per worker per round) and receivers read the
handles zero-copy. A dead actor is restarted by Ray (``max_restarts``); the
protocol then redoes its group's stage from the stage's start, so a failure
never changes a published model.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ostracon.nodes.messages import Assign, Message, Mix
from ostracon.nodes.seeding import CUBLAS_WORKSPACE_CONFIG, set_deterministic
from ostracon.nodes.sources import MEMORY, ShardSource, release
from ostracon.nodes.worker import NO_ANSWER, SENT, Worker, WorkerSpec

from ..config import Config
from ..config.schema import BackendConfig
from ..errors import ClusterError
from .backend import BUSY, DIED, LATE, StepResult, build_worker
from .ray_logs import ray_logging_level, route_driver_messages, stderr_relayed

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"ray://": 10001, "": 6379}  # Ray client server, GCS


def check_reachable(backend: BackendConfig) -> None:
    """Fail within ``backend.start_timeout_s``, naming the address, when no Ray cluster answers at
    ``backend.address`` (Ray itself would retry the GCS for minutes, printing each attempt)."""
    address = backend.address
    if not address:
        return
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=backend.start_timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterError(
            f"backend.address = {address!r}: no Ray cluster answers at {host}:{port} ({reason}, waited at most "
            f"backend.start_timeout_s = {backend.start_timeout_s:g}s); start one with `ray start --head` or "
            "fix the address"
        ) from None


def _host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``ray://HOST[:PORT]`` or ``auto`` (the cluster Ray finds on this machine) -> (host, port)."""
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            found = canonicalize_bootstrap_address("auto")
        except ConnectionError:
            found = None
        if not found:
            raise ClusterError("backend.address = 'auto': no running Ray cluster found on this machine; start one "
                               "with `ray start --head`, or give HOST:PORT") from None
        address = found
    scheme = "ray://" if address.startswith("ray://") else ""
    rest = address[len(scheme):]
    host, sep, port = rest.rpartition(":")
    if not sep:
        return rest, DEFAULT_PORTS[scheme]
    if not port.isdigit():
        raise ClusterError(f"backend.address = {address!r}: expected 'auto', HOST:PORT or ray://HOST:PORT")
    return host.strip("[]"), int(port)

ACTOR_FAILURES = (RayActorError, ActorDiedError, ActorUnavailableError)
PACK_LIMIT_BYTES = 8 << 20  # a group's vectors up to this size travel as one stacked object

# How a message travels to an actor: its kind, then its handles as top-level arguments (Ray resolves
# top-level refs before the call runs, inlining small ones and mapping large ones zero-copy).
_MIX, _MIX_PACKED, _ASSIGN = "mix", "mix_packed", "assign"


def actor_pid(worker: Worker) -> int:
    """The process id of the actor hosting ``worker`` (run it with ``backend.call``)."""
    return os.getpid()


def actor_node_id(worker: Worker) -> str:
    """The Ray node id of the actor hosting ``worker``."""
    return str(ray.get_runtime_context().get_node_id())


def actor_runtime_env(config: Config) -> dict[str, Any] | None:
    """The worker actors' ``runtime_env``: on CUDA in deterministic mode, ``CUBLAS_WORKSPACE_CONFIG``
    (cuBLAS reads it when it initialises, in the actor: without it deterministic matmuls raise). Ray merges
    an actor's ``env_vars`` into the job's ``runtime_env`` (``ray.init(runtime_env=...)``)."""
    if not (config.backend.device.startswith("cuda") and config.deterministic):
        return None
    return {"env_vars": {"CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)}}


class WorkerActor:
    """Hosts one :class:`ostracon.nodes.worker.Worker`; rebuilds the messages whose handles Ray resolved."""

    def __init__(self, spec: WorkerSpec, shard: ShardSource, deterministic: bool, threads: int):
        if deterministic:
            set_deterministic(threads)
        try:
            self.worker = build_worker(spec, shard)
        finally:
            release()  # keep no copy of a built-in source beyond this worker's rows

    @ray.method(num_returns=2)
    def step(self, stage: int, step: int, t: int, kind: str | None, budget: int | None,
             *payload: Any) -> tuple[str | tuple[str, int], Any]:
        vector = self.worker.step(stage, step, t, _message(kind, budget, payload))
        return (self.worker.last_status if vector is None else (SENT, vector.nbytes)), vector

    @ray.method(num_returns=2)
    def attack(self, t: int, budget: int | None, *honest: Any) -> tuple[str | tuple[str, int], Any]:
        vector = self.worker.attack(list(honest), t, budget)
        return (NO_ANSWER if vector is None else (SENT, vector.nbytes)), vector

    def receive(self, kind: str | None, budget: int | None, *payload: Any) -> None:
        self.worker.receive(_message(kind, budget, payload))

    def execute(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.worker, *args)


def _flat(message: Message | None) -> tuple[Any, ...]:
    """A message as ``(kind, budget, *handles)``: top-level refs are resolved by Ray before the call."""
    if message is None:
        return (None, None)
    if isinstance(message, Assign):
        return (_ASSIGN, None, message.parameters)
    return (_MIX, message.f, *message.vectors)


def _message(kind: str | None, budget: int | None, payload: tuple[Any, ...]) -> Message | None:
    if kind is None:
        return None
    if kind == _ASSIGN:
        return Assign(payload[0])
    if kind == _MIX_PACKED:  # one (n, d) array holding every row, in order
        return Mix(payload[0], budget)
    return Mix(list(payload), budget)


R = TypeVar("R")


class RayBackend:
    """One actor per worker; see the module docstring and :class:`~.backend.Backend`."""

    name = "ray"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.actors: dict[int, Any] = {}
        self._busy: dict[int, Any] = {}
        self._vector_bytes: int | None = None  # a round vector's size, as the workers report it
        self._placement_group: Any = None
        self._started_ray = False

    # ----- lifecycle -------------------------------------------------------------------------------
    def start(self, specs: Sequence[WorkerSpec], shards: Mapping[int, ShardSource]) -> None:
        be = self.config.backend
        if any(shards[s.index].source.source == MEMORY for s in specs):
            raise ClusterError("the Ray backend's workers read their rows from the source themselves: data given "
                               "in memory (train(dataset=...)) runs on the local backend only; write it to a "
                               "parquet or npz file (data.source) for Ray")
        if not ray.is_initialized():
            check_reachable(be)
            try:
                ray.init(address=be.address or None, log_to_driver=False, logging_level=ray_logging_level())
            except ConnectionError as exc:
                raise ClusterError(f"backend.address = {be.address!r}: {exc}") from None
            self._started_ray = True
            route_driver_messages()
        elif be.address:
            log.warning("backend.address=%r ignored: this process is already connected to a Ray cluster",
                        be.address)
        num_cpus = be.num_cpus or self._auto_cpus(len(specs))
        options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": be.num_gpus, "max_restarts": be.max_restarts}
        runtime_env = actor_runtime_env(self.config)
        if runtime_env is not None:
            options["runtime_env"] = runtime_env
        if be.placement != "none":
            bundle = {"CPU": num_cpus} | ({"GPU": be.num_gpus} if be.num_gpus else {})
            self._placement_group = placement_group([bundle] * len(specs), strategy=be.placement.upper())
            try:
                ray.get(self._placement_group.ready(), timeout=be.start_timeout_s)
            except GetTimeoutError:
                self.shutdown()
                raise ClusterError(
                    f"backend.placement = {be.placement!r}: {len(specs)} bundles of {bundle} were not placed "
                    f"within backend.start_timeout_s = {be.start_timeout_s:g}s; the cluster has "
                    f"{ray.cluster_resources()}. Lower backend.num_cpus/num_gpus, add nodes, or use placement "
                    "'none'."
                ) from None
        actor_cls = ray.remote(WorkerActor)
        with stderr_relayed():  # the core worker's ERROR line about constructor args in the object store
            for i, spec in enumerate(specs):
                opts = dict(options)
                if self._placement_group is not None:
                    opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                        placement_group=self._placement_group, placement_group_bundle_index=i
                    )
                # The shard is a description (a few hundred bytes): the actor reads its own rows.
                self.actors[spec.index] = actor_cls.options(**opts).remote(
                    spec, shards[spec.index], self.config.deterministic, self.config.threads
                )
        # Fail fast (with the actor's own error) if a worker cannot be built or placed.
        try:
            ray.get([a.execute.remote(actor_pid) for a in self.actors.values()], timeout=be.start_timeout_s)
        except GetTimeoutError:
            self.shutdown()
            raise ClusterError(
                f"{len(specs)} worker actors did not start within {be.start_timeout_s:.0f}s: each asks for "
                f"num_cpus={num_cpus}, num_gpus={be.num_gpus}; the cluster has {ray.cluster_resources()}. "
                "Lower backend.num_cpus/num_gpus (0 = share the CPUs evenly), add nodes, or raise "
                "backend.start_timeout_s (many actors on few CPUs start slowly)."
            ) from None
        log.info("ray backend: %d worker actors ready (num_cpus=%.3g each)", len(self.actors), num_cpus)

    @staticmethod
    def _auto_cpus(n: int) -> float:
        total = ray.cluster_resources().get("CPU", 1.0)
        return max(0.01, min(1.0, round(total / max(1, n), 3)))

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        self.actors.clear()
        if self._placement_group is not None:
            remove_placement_group(self._placement_group)
            self._placement_group = None
        if self._started_ray:
            ray.shutdown()

    # ----- rounds ----------------------------------------------------------------------------------
    def step(self, workers: Sequence[int], stage: int, step: int, t: int,
             incoming: Mapping[int, Message | None], deadline_s: float | None = None) -> StepResult:
        calls = {}
        result = StepResult()
        packed: dict[int, tuple[Any, ...]] = {}
        for j in workers:
            if not self._free(j):
                result.failures[j] = BUSY
                continue
            message = incoming.get(j)
            if isinstance(message, Mix):
                key = id(message.vectors)  # every worker of a group receives the same list
                if key not in packed:
                    packed[key] = self._pack(list(message.vectors), message.f)
                args = packed[key]
            else:
                args = _flat(message)
            calls[j] = self.actors[j].step.remote(stage, step, t, *args)
        return self._collect(calls, deadline_s, result)

    def _pack(self, handles: list[Any], budget: int | None) -> tuple[Any, ...]:
        """Small vectors (a group's round under ``PACK_LIMIT_BYTES``): stacked once into one object (n reads
        a round instead of n^2 transfers). Ray keeps objects under 100 KiB in their owner's memory (the
        driver's) anyway; a task stacking them elsewhere would cost a worker process's start in the round.
        Large vectors stay where their worker put them and are read zero-copy by every receiver: the size
        comes with each worker's answer, so the driver never reads one to learn it."""
        if self._vector_bytes is None or self._vector_bytes * len(handles) > PACK_LIMIT_BYTES:
            return (_MIX, budget, *handles)
        return (_MIX_PACKED, budget, ray.put(np.stack(ray.get(list(handles)))))

    def attack(self, workers: Sequence[int], honest: Sequence[Any], t: int, budget: int | None = None) -> StepResult:
        calls = {j: self.actors[j].attack.remote(t, budget, *honest) for j in workers if self._free(j)}
        return self._collect(calls, None, StepResult())

    def _free(self, j: int) -> bool:
        ref = self._busy.get(j)
        if ref is None:
            return True
        done, _ = ray.wait([ref], timeout=0)
        if done:
            del self._busy[j]
        return bool(done)

    def _collect(self, calls: dict[int, Any], deadline_s: float | None, result: StepResult) -> StepResult:
        flags = {flag: j for j, (flag, _) in calls.items()}
        ready, late = ray.wait(list(flags), num_returns=len(flags), timeout=deadline_s or None)
        for flag in ready:
            j = flags[flag]
            try:
                status = ray.get(flag)
            except ACTOR_FAILURES as exc:
                log.warning("worker %d: actor died (%s)", j, type(exc).__name__)
                result.failures[j] = DIED
                continue
            if isinstance(status, tuple):  # (SENT, the vector's size in bytes)
                self._vector_bytes = int(status[1])
                result.vectors[j] = calls[j][1]
            else:
                result.failures[j] = status
        for flag in late:
            j = flags[flag]
            result.failures[j] = LATE
            self._busy[j] = flag
        return result

    # ----- control ---------------------------------------------------------------------------------
    def deliver(self, messages: Mapping[int, Message]) -> None:
        self._wait_all({j: functools.partial(self._send, j, m) for j, m in messages.items()})

    def call(self, workers: Sequence[int], fn: Callable[..., R], *args: Any) -> dict[int, R]:
        return self.call_each(fn, dict.fromkeys(workers, args))

    def call_each(self, fn: Callable[..., R], args: Mapping[int, tuple[Any, ...]]) -> dict[int, R]:
        return self._wait_all({j: functools.partial(self._execute, j, fn, a) for j, a in args.items()})

    def _send(self, worker: int, message: Message) -> Any:
        return self.actors[worker].receive.remote(*_flat(message))

    def _execute(self, worker: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        return self.actors[worker].execute.remote(fn, *args)

    def _wait_all(self, submit: Mapping[int, Callable[[], Any]]) -> dict[int, Any]:
        """Submit every call, then wait for each; a call to a restarting actor is resubmitted."""
        refs = {j: send() for j, send in submit.items()}
        out = {}
        for j, ref in refs.items():
            deadline = time.monotonic() + self.config.backend.start_timeout_s
            while True:
                try:
                    out[j] = ray.get(ref)
                    break
                except ACTOR_FAILURES:
                    # The actor is restarting: control calls wait for it (rounds do not). The protocol
                    # notices the restart by the worker's new incarnation and redoes its stage.
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
                    ref = submit[j]()
        return out

    def fetch(self, handles: Sequence[Any]) -> list[np.ndarray]:
        return list(ray.get(list(handles)))

    def put(self, array: np.ndarray) -> Any:
        return ray.put(array)

    def nodes(self, workers: Sequence[int]) -> dict[int, str]:
        return self.call(workers, actor_node_id)

    def pids(self, workers: Sequence[int]) -> dict[int, int]:
        """The process id of each worker's actor (fault drills)."""
        return self.call(workers, actor_pid)

    def kill(self, worker: int) -> None:
        """Kill a worker's process; Ray restarts it if ``max_restarts`` allows (fault injection)."""
        ray.kill(self.actors[worker], no_restart=False)
