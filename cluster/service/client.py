"""``CoordinatorClient``: the Python client of ``ostracon.v1.Coordinator``, returning plain Python values.

Every call has a deadline (``timeout`` seconds). A failed call raises :class:`CoordinatorError`, an
:class:`~ostracon.cluster.errors.OstraconError` (one line: ``CODE: details``) that also answers
``code()`` and ``details()`` like a ``grpc.RpcError``.

Values returned:

- an operation is a dict ``{"id", "state", "progress", "message", "sample_ids", "create_time",
  "update_time", "model_version", "mode"}``: ``state`` is ``"PENDING"``, ``"RUNNING"``, ``"SUCCEEDED"``,
  ``"FAILED"`` or ``"CANCELLED"``; ``mode`` ``"exact"``, ``"approximate"`` or ``"approximate_then_exact"``;
  times are unix seconds (float); ``model_version`` is the version it published (0 until then);
- ``certificate`` is the certificate exactly as written to disk (a dict, e.g. ``"deleted"``,
  ``"model_version_after"``, ``"group_digests"``);
- ``predict`` is ``(labels int64 (n,), probabilities float32 (n, classes), model_version)``;
- ``status`` is ``{"workers": [{"index", "group", "byzantine", "alive", "restarts", "node"}],
  "model_version", "queue_depth", "backend"}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ostracon.v1 import coordinator_pb2 as pb
from ostracon.v1 import coordinator_pb2_grpc as pb_grpc

from ..errors import ConfigError, OstraconError, RequestError
from ..vocabulary import DeletionMode, OperationState
from .auth import bearer_metadata
from .server import CHANNEL_OPTIONS, is_loopback
from .servicer import MODE_ENUMS, MODES, SERVICE_NAME
from .tensors import decode, encode


class CoordinatorError(OstraconError, grpc.RpcError):
    """A call the coordinator refused or could not answer; ``str()`` is ``CODE: details``."""

    def __init__(self, code: grpc.StatusCode, details: str, target: str):
        self._code, self._details, self.target = code, details, target
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            details = f"coordinator at {target}: {details}"  # say where we were trying to reach
        super().__init__(f"{code.name}: {details}")

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def operation_dict(op: pb.Operation) -> dict:
    return {"id": op.id, "state": pb.OperationState.Name(op.state).removeprefix("OPERATION_STATE_"),
            "progress": op.progress, "message": op.message, "sample_ids": list(op.sample_ids),
            "create_time": op.create_time.ToNanoseconds() / 1e9,
            "update_time": op.update_time.ToNanoseconds() / 1e9, "model_version": op.model_version,
            "mode": MODES[op.mode].value}


LOCAL_SCHEMES = ("unix:", "unix-abstract:")  # gRPC targets that never leave this machine
RESOLVER_SCHEMES = ("dns:", "ipv4:", "ipv6:")  # gRPC targets naming hosts after a scheme


def target_hosts(target: str) -> list[str]:
    """The hosts a gRPC ``target`` names: 'h:1' -> ['h'], '[::1]:1' -> ['::1'], 'dns:///h:1' -> ['h'],
    'ipv4:10.0.0.1:1,10.0.0.2:1' -> both; [] for a Unix socket."""
    if target.startswith(LOCAL_SCHEMES):
        return []
    rest = target
    for scheme in RESOLVER_SCHEMES:
        if rest.startswith(scheme):
            rest = rest[len(scheme):]
            if rest.startswith("//"):  # dns://[authority]/host:port: the DNS server is not the target
                rest = rest[2:].partition("/")[2]
            break
    return [_host_of(address) for address in rest.split(",")]


def _host_of(address: str) -> str:
    if address.startswith("["):  # [v6]:port
        return address[1:].partition("]")[0]
    if address.count(":") == 1:  # host:port
        return address.partition(":")[0]
    return address  # a bare host, or a bare IPv6 address


def check_token_transport(target: str, token: str | None, tls: bool, insecure: bool) -> None:
    """Refuse, before any channel exists, to send a bearer token in plaintext beyond this machine: anyone on
    the path could read it and act as the client."""
    if token is None or tls or insecure:
        return
    hosts = target_hosts(target)
    if not all(is_loopback(host) for host in hosts):
        raise ConfigError(f"--target {target} is not a loopback address: refusing to send the bearer token "
                          "over plaintext gRPC; give --tls-ca (tls_ca=) for a TLS coordinator, or --insecure "
                          "(insecure=True) if the network is trusted")


class CoordinatorClient:
    """A channel to one coordinator at ``target`` (``HOST:PORT``); TLS when ``tls_ca`` (a PEM file of the
    CA that signed the server's certificate) is given. A token goes in plaintext only to a loopback target,
    or anywhere with ``insecure=True``. Use as a context manager, or call :meth:`close`."""

    def __init__(self, target: str, token: str | None = None, timeout: float = 30.0, tls_ca: str | None = None,
                 insecure: bool = False):
        if not timeout or timeout <= 0:
            raise RequestError(f"timeout: {timeout} is not a positive number of seconds")
        check_token_transport(target, token, tls=bool(tls_ca), insecure=insecure)
        self.target, self.timeout = target, float(timeout)
        self._metadata = bearer_metadata(token)
        if tls_ca:
            with open(tls_ca, "rb") as fh:
                credentials = grpc.ssl_channel_credentials(root_certificates=fh.read())
            self._channel = grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.CoordinatorStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _unary(self, method, request, timeout: float | None = None):
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> CoordinatorError:
        return CoordinatorError(exc.code(), exc.details() or "", self.target)

    def delete(self, ids, mode: str = DeletionMode.EXACT, method: str = "", idempotency_key: str = "",
               wait: bool = False) -> dict:
        """Queue a deletion of ``ids``; with ``wait``, follow it to its final state and return that."""
        if mode not in DeletionMode.values():
            raise RequestError(f"mode: {mode!r} is not one of {', '.join(DeletionMode.values())}")
        request = pb.DeleteRequest(sample_ids=list(ids), mode=MODE_ENUMS[DeletionMode(mode)], method=method,
                                   idempotency_key=idempotency_key)
        op = operation_dict(self._unary(self._stub.Delete, request))
        if wait:
            for _, event in self.watch(op["id"]):
                op = event
        return op

    def operation(self, op_id: str) -> dict:
        return operation_dict(self._unary(self._stub.GetOperation, pb.GetOperationRequest(operation_id=op_id)))

    def operations(self, page_size: int = 50, page_token: str = "") -> tuple[list[dict], str]:
        """One page, newest first, and the token of the next page ("" on the last)."""
        response = self._unary(self._stub.ListOperations,
                               pb.ListOperationsRequest(page_size=page_size, page_token=page_token))
        return [operation_dict(op) for op in response.operations], response.next_page_token

    def cancel(self, op_id: str) -> dict:
        return operation_dict(self._unary(self._stub.CancelOperation,
                                          pb.CancelOperationRequest(operation_id=op_id)))

    def watch(self, op_id: str, after_sequence: int = 0, timeout: float | None = None) -> Iterator[tuple[int, dict]]:
        """``(sequence, operation)`` events after ``after_sequence`` until the final state. Each stream has a
        deadline (``timeout``, default the client's); when it passes, the watch resumes after the last event."""
        after = after_sequence
        while True:
            call = self._stub.WatchOperation(pb.WatchOperationRequest(operation_id=op_id, after_sequence=after),
                                             timeout=timeout or self.timeout, metadata=self._metadata)
            try:
                for event in call:
                    after = event.sequence
                    op = operation_dict(event.operation)
                    yield event.sequence, op
                    if OperationState(op["state"]).is_final:
                        return
                return  # the server ended the stream: nothing after ``after`` will come
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise self._error(exc) from None
            finally:
                call.cancel()

    def certificate(self, op_id: str) -> dict:
        response = self._unary(self._stub.GetCertificate, pb.GetCertificateRequest(operation_id=op_id))
        return json.loads(response.json)

    def predict(self, x) -> tuple[np.ndarray, np.ndarray, int]:
        response = self._unary(self._stub.Predict, pb.PredictRequest(inputs=encode(np.asarray(x))))
        return (np.asarray(response.labels, dtype=np.int64), decode(response.probabilities, "probabilities"),
                response.model_version)

    def status(self) -> dict:
        s = self._unary(self._stub.GetClusterStatus, pb.GetClusterStatusRequest())
        workers = [{"index": w.index, "group": w.group, "byzantine": w.byzantine, "alive": w.alive,
                    "restarts": w.restarts, "node": w.node} for w in s.workers]
        return {"workers": workers, "model_version": s.model_version, "queue_depth": s.queue_depth,
                "backend": s.backend}

    def health(self, service: str = SERVICE_NAME) -> str:
        """``"SERVING"``, ``"NOT_SERVING"``, ... as the standard health service reports ``service``."""
        response = self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
