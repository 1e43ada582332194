"""What spans workers, in layers (each imports only the layers below it; docs/design.md, "Layers"):

- base: :mod:`.errors`, :mod:`.vocabulary`, :mod:`.faults`
- :mod:`.config`: the run's configuration, its schema and reference
- :mod:`.storage`: the state directory's durable records (ledger, checkpoints, derived outputs)
- :mod:`.execution`: backends, training protocols, plans, sessions and training
- :mod:`.unlearning`: deletion requests against a trained state directory, and the audit
- :mod:`.coordinator`: a warm deployment and its journal of operations
- :mod:`.service`: the gRPC service, server and client
- top: :mod:`.cli`, :mod:`.demo`, :mod:`.config_reference`
"""

from .errors import (
    ClusterError,
    ConfigError,
    DataError,
    HeldOutIdsError,
    IdempotencyConflictError,
    OperationNotFoundError,
    OstraconError,
    PreconditionError,
    RequestError,
    StateDirError,
    UnknownIdsError,
)


def __getattr__(name: str) -> object:
    # Deployment pulls in torch and the whole cluster, the client grpc: imported on first use, not with the package.
    if name in ("Deployment", "Operation"):
        from .coordinator import deployment

        return getattr(deployment, name)
    if name in ("WorkerStatus", "ClusterStatus"):
        from .coordinator import status

        return getattr(status, name)
    if name == "CoordinatorClient":
        from .service.client import CoordinatorClient

        return CoordinatorClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ClusterError", "ClusterStatus", "ConfigError", "CoordinatorClient", "DataError", "Deployment",
           "HeldOutIdsError", "IdempotencyConflictError", "Operation", "OperationNotFoundError", "OstraconError",
           "PreconditionError", "RequestError", "StateDirError", "UnknownIdsError", "WorkerStatus"]
