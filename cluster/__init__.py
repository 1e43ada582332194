"""What spans workers: config, backends, protocols, training, unlearning, the coordinator, the command line."""

from .errors import (ClusterError, ConfigError, DataError, HeldOutIdsError, IdempotencyConflictError,
                     OperationNotFoundError, OstraconError, PreconditionError, RequestError, StateDirError,
                     UnknownIdsError)


def __getattr__(name):
    # Deployment pulls in torch and the whole cluster, the client grpc: imported on first use, not with the package.
    if name in ("Deployment", "Operation", "WorkerStatus", "ClusterStatus"):
        from . import deployment

        return getattr(deployment, name)
    if name == "CoordinatorClient":
        from .service.client import CoordinatorClient

        return CoordinatorClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ClusterError", "ClusterStatus", "ConfigError", "CoordinatorClient", "DataError", "Deployment",
           "HeldOutIdsError", "IdempotencyConflictError", "Operation", "OperationNotFoundError", "OstraconError",
           "PreconditionError", "RequestError", "StateDirError", "UnknownIdsError", "WorkerStatus"]
