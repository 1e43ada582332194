"""What spans workers: config, backends, protocols, training, unlearning, the coordinator, the command line."""

from .errors import ClusterError, ConfigError, DataError, OstraconError, RequestError, StateDirError

__all__ = ["ClusterError", "ConfigError", "CoordinatorClient", "DataError", "OstraconError", "RequestError",
           "StateDirError"]


def __getattr__(name: str):
    if name == "CoordinatorClient":  # imported on first use: grpc loads only for code that talks to a server
        from .service.client import CoordinatorClient

        return CoordinatorClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
