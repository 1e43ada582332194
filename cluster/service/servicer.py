"""``ostracon.v1.Coordinator`` over a :class:`~ostracon.cluster.coordinator.deployment.Deployment`.

Each RPC checks the request's shape (naming the field), calls the deployment, and turns its errors
into status codes (:mod:`.statuses`); the deployment checks the meaning (unknown ids, held-out ids,
too many ids, idempotency).
"""

from __future__ import annotations

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from ostracon.v1 import coordinator_pb2 as pb
from ostracon.v1 import coordinator_pb2_grpc as pb_grpc

from ..coordinator.journal import Operation
from ..coordinator.status import ClusterStatus
from ..errors import RequestError
from ..storage.records import Certificate, NothingToDelete
from ..vocabulary import DeletionMode
from .statuses import status_for
from .tensors import decode_inputs, encode

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name  # "ostracon.v1.Coordinator"
WATCH_POLL_S = 1.0  # a watch wakes this often to notice a client that went away
DEFAULT_PAGE_SIZE = 50

# The wire enums spell the vocabulary's members: DELETION_MODE_<NAME>, OPERATION_STATE_<VALUE>.
MODE_ENUMS = {mode: pb.DeletionMode.Value(f"DELETION_MODE_{mode.name}") for mode in DeletionMode}
MODES = {pb.DELETION_MODE_UNSPECIFIED: DeletionMode.EXACT,  # the server's default
         **{number: mode for mode, number in MODE_ENUMS.items()}}


class CallAborted(Exception):
    """Raised by :func:`_abort` so type checkers see it never returns (``context.abort`` raises too)."""


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


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str):
    context.abort(code, details)
    raise CallAborted(details)  # not reached: abort raises


def _abort_for(context: grpc.ServicerContext, exc: BaseException):
    _abort(context, *status_for(exc))


def validate_delete(request: pb.DeleteRequest) -> tuple[list[str], DeletionMode]:
    """(ids, mode) of a well-formed DeleteRequest; :class:`RequestError` naming the field otherwise."""
    if not request.sample_ids:
        raise RequestError("sample_ids: empty; give at least one sample id")
    for index, sample_id in enumerate(request.sample_ids):
        if not sample_id:
            raise RequestError(f"sample_ids[{index}]: an empty string is not a sample id")
    if request.mode not in MODES:
        raise RequestError(f"mode: {request.mode} is not a DeletionMode value")
    return list(request.sample_ids), MODES[request.mode]


def _operation_id(request, context) -> str:
    if not request.operation_id:
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "operation_id: empty; give an operation id")
    return request.operation_id


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    """The RPCs; every call needs a warm deployment (UNAVAILABLE while it starts)."""

    def __init__(self, deployment):
        self.deployment = deployment

    def _ready(self, context) -> None:
        if not self.deployment.ready:
            _abort(context, grpc.StatusCode.UNAVAILABLE,
                   f"{SERVICE_NAME} is not ready: the cluster is starting or stopping (health says SERVING when ready)")

    def _call(self, context, fn, *args, **kwargs):
        self._ready(context)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status; bugs are INTERNAL and logged
            _abort_for(context, exc)

    def Delete(self, request, context):
        self._ready(context)
        try:
            ids, mode = validate_delete(request)
        except RequestError as exc:
            _abort_for(context, exc)
        op = self._call(context, self.deployment.delete, ids, mode=mode, method=request.method,
                        idempotency_key=request.idempotency_key)
        return operation_proto(op)

    def GetOperation(self, request, context):
        return operation_proto(self._call(context, self.deployment.operation, _operation_id(request, context)))

    def ListOperations(self, request, context):
        if request.page_size < 0:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"page_size: {request.page_size} is negative")
        ops, token = self._call(context, self.deployment.operations, page_size=request.page_size or DEFAULT_PAGE_SIZE,
                                page_token=request.page_token)
        return pb.ListOperationsResponse(operations=[operation_proto(op) for op in ops], next_page_token=token)

    def CancelOperation(self, request, context):
        return operation_proto(self._call(context, self.deployment.cancel, _operation_id(request, context)))

    def WatchOperation(self, request, context):
        op_id = _operation_id(request, context)
        if request.after_sequence < 0:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"after_sequence: {request.after_sequence} is negative")
        self._call(context, self.deployment.operation, op_id)  # NOT_FOUND before the stream starts
        after = request.after_sequence
        while context.is_active():
            try:
                for sequence, op in self.deployment.watch(op_id, after_sequence=after, timeout=WATCH_POLL_S):
                    yield pb.OperationEvent(sequence=sequence, operation=operation_proto(op))
                    after = sequence
                    if op.done:
                        return
                if self.deployment.operation(op_id).done:
                    # Final, yet not seen here: either resumed after the final event (nothing left), or it
                    # became final just now; one more pass replays whatever is stored, then ends.
                    for sequence, op in self.deployment.watch(op_id, after_sequence=after, timeout=0):
                        yield pb.OperationEvent(sequence=sequence, operation=operation_proto(op))
                    return
            except TimeoutError:
                continue  # no event within the poll interval: check the client is still there
            except Exception as exc:  # noqa: BLE001 - as in _call: a status, never a dropped stream
                _abort_for(context, exc)

    def GetCertificate(self, request, context):
        op_id = _operation_id(request, context)
        return certificate_proto(op_id, self._call(context, self.deployment.certificate, op_id))

    def Predict(self, request, context):
        self._ready(context)
        if not request.HasField("inputs"):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "inputs: missing; send a Tensor of model inputs")
        try:
            x = decode_inputs(request.inputs, tuple(self.deployment.input_shape))
        except RequestError as exc:
            _abort_for(context, exc)
        labels, probabilities, version = self._call(context, self.deployment.predict, x)
        return pb.PredictResponse(labels=np.asarray(labels, dtype=np.int64).tolist(),
                                  probabilities=encode(np.asarray(probabilities, dtype=np.float32)),
                                  model_version=int(version))

    def GetClusterStatus(self, request, context):
        return cluster_status_proto(self._call(context, self.deployment.status))
