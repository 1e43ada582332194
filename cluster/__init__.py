"""What spans workers: config, backends, protocols, training, unlearning, the command line."""

from .errors import (ClusterError, ConfigError, DataError, HeldOutIdsError, IdempotencyConflictError,
                     OperationNotFoundError, OstraconError, PreconditionError, RequestError, StateDirError,
                     UnknownIdsError)


def __getattr__(name):
    # Deployment pulls in torch and the whole cluster: imported on first use, not with the package.
    if name in ("Deployment", "Operation", "WorkerStatus", "ClusterStatus"):
        from . import deployment

        return getattr(deployment, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ClusterError", "ClusterStatus", "ConfigError", "DataError", "Deployment", "HeldOutIdsError",
           "IdempotencyConflictError", "Operation", "OperationNotFoundError", "OstraconError", "PreconditionError",
           "RequestError", "StateDirError", "UnknownIdsError", "WorkerStatus"]
