"""``ostracon.v1.Coordinator`` over a :class:`~ostracon.cluster.deployment.Deployment`.

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

from ..errors import RequestError
from .statuses import status_for
from .tensors import decode_inputs, encode

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name  # "ostracon.v1.Coordinator"
FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
WATCH_POLL_S = 1.0  # a watch wakes this often to notice a client that went away
DEFAULT_PAGE_SIZE = 50

MODES = {pb.DELETION_MODE_UNSPECIFIED: "exact",  # the server's default
         pb.DELETION_MODE_EXACT: "exact",
         pb.DELETION_MODE_APPROXIMATE: "approximate",
         pb.DELETION_MODE_APPROXIMATE_THEN_EXACT: "approximate_then_exact"}
MODE_ENUMS = {"exact": pb.DELETION_MODE_EXACT, "approximate": pb.DELETION_MODE_APPROXIMATE,
              "approximate_then_exact": pb.DELETION_MODE_APPROXIMATE_THEN_EXACT}


class CallAborted(Exception):
    """Raised by :func:`_abort` so type checkers see it never returns (``context.abort`` raises too)."""


def timestamp(unix_seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(round(unix_seconds * 1e9))
    return ts


def operation_proto(op) -> pb.Operation:
    """A deployment ``Operation`` as ``ostracon.v1.Operation`` (mode as applied; times as Timestamps)."""
    return pb.Operation(id=op.id, state=pb.OperationState.Value(f"OPERATION_STATE_{op.state}"),
                        progress=float(op.progress), message=op.message, sample_ids=list(op.sample_ids),
                        create_time=timestamp(op.create_time), update_time=timestamp(op.update_time),
                        model_version=int(op.model_version), mode=MODE_ENUMS.get(op.mode, pb.DELETION_MODE_EXACT))


def certificate_proto(operation_id: str, cert: dict) -> pb.DeletionCertificate:
    """The certificate covering ``operation_id``; ``json`` is the certificate as written to disk."""
    from ..unlearning.certificates import encode as encode_certificate

    on_disk = {k: v for k, v in cert.items() if k != "certificate_path"}  # added after reading, not stored
    version = cert.get("model_version", 0)  # a no-op certificate names one version
    return pb.DeletionCertificate(
        operation_id=operation_id, mode=MODE_ENUMS.get(cert.get("mode", "exact"), pb.DELETION_MODE_EXACT),
        sample_ids=list(cert.get("deleted", [])),
        model_version_before=int(cert.get("model_version_before", version)),
        model_version_after=int(cert.get("model_version_after", version)),
        group_digests={str(g): str(d) for g, d in cert.get("group_digests", {}).items()},
        gradient_evaluations=int(cert.get("gradient_evaluations", 0)),
        full_retrain_gradient_evaluations=int(cert.get("full_retrain_gradient_evaluations", 0)),
        json=encode_certificate(on_disk))


def cluster_status_proto(status) -> pb.ClusterStatus:
    workers = [pb.WorkerStatus(index=w.index, group=w.group, byzantine=bool(w.byzantine), alive=bool(w.alive),
                               restarts=w.restarts, node=str(w.node or "")) for w in status.workers]
    return pb.ClusterStatus(workers=workers, model_version=int(status.model_version),
                            queue_depth=int(status.queue_depth), backend=status.backend)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str):
    context.abort(code, details)
    raise CallAborted(details)  # not reached: abort raises


def _abort_for(context: grpc.ServicerContext, exc: BaseException):
    _abort(context, *status_for(exc))


def validate_delete(request: pb.DeleteRequest) -> tuple[list[str], str]:
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
        except Exception as exc:  # every error becomes a status; bugs are INTERNAL and logged
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
                    if op.state in FINAL_STATES:
                        return
                if self.deployment.operation(op_id).state in FINAL_STATES:
                    # Final, yet not seen here: either resumed after the final event (nothing left), or it
                    # became final just now; one more pass replays whatever is stored, then ends.
                    for sequence, op in self.deployment.watch(op_id, after_sequence=after, timeout=0):
                        yield pb.OperationEvent(sequence=sequence, operation=operation_proto(op))
                    return
            except TimeoutError:
                continue  # no event within the poll interval: check the client is still there
            except Exception as exc:
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
