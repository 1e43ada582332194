"""What spans workers: config, backends, protocols, training, unlearning, the command line."""

from .errors import ClusterError, ConfigError, DataError, OstraconError, RequestError, StateDirError

__all__ = ["ClusterError", "ConfigError", "DataError", "OstraconError", "RequestError", "StateDirError"]
