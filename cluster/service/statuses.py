"""Which gRPC status code an ostracon error becomes: by type, most specific first, never UNKNOWN."""

from __future__ import annotations

import logging

import grpc

from ..errors import (
    ClusterError,
    ConfigError,
    HeldOutIdsError,
    IdempotencyConflictError,
    OperationNotFoundError,
    OstraconError,
    PreconditionError,
    RequestError,
    StateDirError,
    UnknownIdsError,
)

log = logging.getLogger("ostracon.cluster.service")

C = grpc.StatusCode
# Order matters: a subclass comes before its base (UnknownIdsError is a RequestError).
ERROR_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (UnknownIdsError, C.NOT_FOUND),
    (HeldOutIdsError, C.FAILED_PRECONDITION),
    (RequestError, C.INVALID_ARGUMENT),
    (ConfigError, C.INVALID_ARGUMENT),
    (IdempotencyConflictError, C.ALREADY_EXISTS),
    (OperationNotFoundError, C.NOT_FOUND),
    (PreconditionError, C.FAILED_PRECONDITION),
    (StateDirError, C.FAILED_PRECONDITION),
    (ClusterError, C.UNAVAILABLE),
    (OstraconError, C.FAILED_PRECONDITION),  # any other error the operator can act on
)
MAX_DETAILS = 2000  # status details travel in a header; keep them well under the default 8 KiB limit


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, one-line details) for ``exc``; a bug is INTERNAL with no internals leaked (it is logged)."""
    for cls, code in ERROR_CODES:
        if isinstance(exc, cls):
            return code, _one_line(str(exc)) or cls.__name__
    log.exception("bug while serving a call", exc_info=exc)
    return C.INTERNAL, f"internal error ({type(exc).__name__}); the server log has the traceback"


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAILS else text[:MAX_DETAILS - 1] + "…"
