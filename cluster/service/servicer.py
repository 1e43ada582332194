"""``ostracon.v1.Coordinator`` over a :class:`~ostracon.cluster.coordinator.deployment.Deployment`.

Each RPC checks the request's shape (naming the field), calls the deployment, and turns its errors
into status codes (:mod:`.statuses`); the deployment checks the meaning (unknown ids, held-out ids,
too many ids, idempotency).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from concurrent.futures import Executor
from typing import NoReturn

import grpc
import grpc.aio
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from ostracon.v1 import coordinator_pb2 as pb
from ostracon.v1 import coordinator_pb2_grpc as pb_grpc

from ..coordinator.journal import Operation
from ..coordinator.status import ClusterStatus
from ..errors import RequestError
from ..storage.records import Certificate, NothingToDelete
from ..unlearning.requests import LimitExceededError
from ..vocabulary import DeletionMode
from .auth import presented_token
from .statuses import status_for
from .tensors import decode_inputs, encode

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name  # "ostracon.v1.Coordinator"
WATCH_POLL_MIN_S = 0.05  # a watch polls the journal this soon after an event ...
WATCH_POLL_S = 0.25  # ... and backs off to this while nothing happens (no thread waits between polls)
MAX_WATCHES_PER_CALLER = 32  # open WatchOperation streams per bearer token; more: RESOURCE_EXHAUSTED
DEFAULT_PAGE_SIZE = 50

# The wire enums spell the vocabulary's members: DELETION_MODE_<NAME>, OPERATION_STATE_<VALUE>.
MODE_ENUMS = {mode: pb.DeletionMode.Value(f"DELETION_MODE_{mode.name}") for mode in DeletionMode}
MODES = {pb.DELETION_MODE_UNSPECIFIED: DeletionMode.EXACT,  # the server's default
         **{number: mode for mode, number in MODE_ENUMS.items()}}


def timestamp(unix_seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(round(unix_seconds * 1e9))
    return ts


def operation_proto(op: Operation) -> pb.Operation:
    """A deployment ``Operation`` as ``ostracon.v1.Operation`` (mode as applied; times as Timestamps)."""
    return pb.Operation(id=op.id, state=pb.OperationState.Value(f"OPERATION_STATE_{op.state}"),
                        progress=float(op.progress), message=op.message, sample_ids=list(op.sample_ids),
                        create_time=timestamp(op.create_time), update_time=timestamp(op.update_time),
                        model_version=int(op.model_version), mode=MODE_ENUMS[op.mode])


def certificate_proto(operation_id: str, cert: Certificate | NothingToDelete) -> pb.DeletionCertificate:
    """The certificate covering ``operation_id``; ``json`` is the certificate as written to disk."""
    if isinstance(cert, NothingToDelete):  # nothing changed: one version, nothing deleted, nothing stored
        return pb.DeletionCertificate(operation_id=operation_id, mode=MODE_ENUMS[cert.mode],
                                      model_version_before=cert.model_version,
                                      model_version_after=cert.model_version, json=cert.to_json())
    return pb.DeletionCertificate(
        operation_id=operation_id, mode=MODE_ENUMS[cert.mode], sample_ids=list(cert.deleted),
        model_version_before=cert.model_version_before, model_version_after=cert.model_version_after,
        group_digests=dict(cert.group_digests), gradient_evaluations=cert.cost.gradient_evaluations,
        full_retrain_gradient_evaluations=cert.cost.full_retrain_gradient_evaluations, json=cert.to_json())


def cluster_status_proto(status: ClusterStatus) -> pb.ClusterStatus:
    workers = [pb.WorkerStatus(index=w.index, group=w.group, byzantine=bool(w.byzantine), alive=bool(w.alive),
                               restarts=w.restarts, node=str(w.node or "")) for w in status.workers]
    return pb.ClusterStatus(workers=workers, model_version=int(status.model_version),
                            queue_depth=int(status.queue_depth), backend=status.backend)


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("not reached: abort raises")


async def _abort_for(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    await _abort(context, *status_for(exc))


def validate_delete(request: pb.DeleteRequest, max_ids: int | None = None) -> tuple[list[str], DeletionMode]:
    """(ids, mode) of a well-formed DeleteRequest; :class:`RequestError` naming the field otherwise. The raw id
    count is bounded first, in O(1): 10M copies of one id are refused before anything walks them."""
    count = len(request.sample_ids)
    if max_ids is not None and count > max_ids:
        raise LimitExceededError(f"sample_ids: {count} ids exceed max_ids_per_request = {max_ids} (counted as "
                                 "given, duplicates included); split the request", "sample_ids")
    if not count:
        raise RequestError("sample_ids: empty; give at least one sample id")
    for index, sample_id in enumerate(request.sample_ids):
        if not sample_id:
            raise RequestError(f"sample_ids[{index}]: an empty string is not a sample id")
    if request.mode not in MODES:
        raise RequestError(f"mode: {request.mode} is not a DeletionMode value")
    return list(request.sample_ids), MODES[request.mode]


async def _operation_id(request, context) -> str:
    if not request.operation_id:
        await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "operation_id: empty; give an operation id")
    return request.operation_id


def _caller(context) -> str:
    """Whom a per-caller limit counts: a digest of the bearer token ("" without one)."""
    token = presented_token(context.invocation_metadata())
    return hashlib.sha256(token).hexdigest() if token is not None else ""


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    """The RPCs, as coroutines on the server's event loop; every deployment call runs in ``pool`` (a bounded
    executor), so a slow or waiting call never holds the loop. Every call needs a warm deployment
    (UNAVAILABLE while it starts). At most ``max_watches_per_caller`` WatchOperation streams are open per
    bearer credential (all callers share one count when the server has no token)."""

    def __init__(self, deployment, pool: Executor, *, max_watches_per_caller: int = MAX_WATCHES_PER_CALLER,
                 per_token: bool = True):
        self.deployment = deployment
        self.per_token = per_token  # False (no token on the server): one count for everybody
        self.pool = pool
        self.max_watches_per_caller = max_watches_per_caller
        self._watches: dict[str, int] = {}  # caller -> open streams; a caller with none has no entry

    async def _ready(self, context) -> None:
        if not self.deployment.ready:
            await _abort(context, grpc.StatusCode.UNAVAILABLE,
                         f"{SERVICE_NAME} is not ready: the cluster is starting or stopping "
                         "(health says SERVING when ready)")

    async def _run(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    async def _call(self, context, fn, *args, **kwargs):
        await self._ready(context)
        try:
            return await self._run(fn, *args, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status; bugs are INTERNAL and logged
            failure = exc
        await _abort_for(context, failure)

    async def Delete(self, request, context):
        await self._ready(context)
        try:
            ids, mode = validate_delete(request, self.deployment.max_ids_per_request)
        except RequestError as exc:
            await _abort_for(context, exc)
        op = await self._call(context, self.deployment.delete, ids, mode=mode, method=request.method,
                              idempotency_key=request.idempotency_key)
        return operation_proto(op)

    async def GetOperation(self, request, context):
        op_id = await _operation_id(request, context)
        return operation_proto(await self._call(context, self.deployment.operation, op_id))

    async def ListOperations(self, request, context):
        if request.page_size < 0:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"page_size: {request.page_size} is negative")
        ops, token = await self._call(context, self.deployment.operations,
                                      page_size=request.page_size or DEFAULT_PAGE_SIZE, page_token=request.page_token)
        return pb.ListOperationsResponse(operations=[operation_proto(op) for op in ops], next_page_token=token)

    async def CancelOperation(self, request, context):
        op_id = await _operation_id(request, context)
        return operation_proto(await self._call(context, self.deployment.cancel, op_id))

    def _watch_step(self, op_id: str, after: int) -> tuple[list[tuple[int, Operation]], bool]:
        """(stored events after ``after``, whether the stream is over); never waits."""
        events = list(self.deployment.watch(op_id, after_sequence=after, timeout=0))
        if events and events[-1][1].done:
            return events, True
        if self.deployment.operation(op_id).done:
            # Final, yet not seen here: either resumed after the final event (nothing left), or it became
            # final just now; one more pass replays whatever is stored, then the stream ends.
            last = events[-1][0] if events else after
            return events + list(self.deployment.watch(op_id, after_sequence=last, timeout=0)), True
        return events, False

    async def WatchOperation(self, request, context):
        op_id = await _operation_id(request, context)
        if request.after_sequence < 0:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"after_sequence: {request.after_sequence} is negative")
        await self._call(context, self.deployment.operation, op_id)  # NOT_FOUND before the stream starts
        caller = _caller(context) if self.per_token else ""
        if self._watches.get(caller, 0) >= self.max_watches_per_caller:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"too many open WatchOperation streams for this caller (limit "
                         f"{self.max_watches_per_caller}); close one, or poll GetOperation")
        self._watches[caller] = self._watches.get(caller, 0) + 1
        try:
            after, pause = request.after_sequence, WATCH_POLL_MIN_S
            while True:
                events, over = await self._call(context, self._watch_step, op_id, after)
                for sequence, op in events:
                    yield pb.OperationEvent(sequence=sequence, operation=operation_proto(op))
                    after = sequence
                if over:
                    return
                # No thread waits for the next event: poll, backing off while nothing happens.
                pause = WATCH_POLL_MIN_S if events else min(pause * 2, WATCH_POLL_S)
                await asyncio.sleep(pause)
        finally:
            left = self._watches[caller] - 1
            if left:
                self._watches[caller] = left
            else:
                del self._watches[caller]

    async def GetCertificate(self, request, context):
        op_id = await _operation_id(request, context)
        return certificate_proto(op_id, await self._call(context, self.deployment.certificate, op_id))

    async def Predict(self, request, context):
        await self._ready(context)
        if not request.HasField("inputs"):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "inputs: missing; send a Tensor of model inputs")
        try:
            x = decode_inputs(request.inputs, tuple(self.deployment.input_shape))
        except RequestError as exc:
            await _abort_for(context, exc)
        labels, probabilities, version = await self._call(context, self.deployment.predict, x)
        return pb.PredictResponse(labels=np.asarray(labels, dtype=np.int64).tolist(),
                                  probabilities=encode(np.asarray(probabilities, dtype=np.float32)),
                                  model_version=int(version))

    async def GetClusterStatus(self, request, context):
        return cluster_status_proto(await self._call(context, self.deployment.status))
