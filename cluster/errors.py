"""The errors a user can act on.

Every :class:`OstraconError` names the file, key or address at fault; the
command line prints it as one line and exits with status 2. Any other
exception is a bug: the command line prints its traceback and exits 1.
"""

from __future__ import annotations


class OstraconError(Exception):
    """A problem with the user's input or environment; the message says which file, key or address."""


class ConfigError(OstraconError, ValueError):
    """A configuration problem; the message names the offending key."""


class DataError(OstraconError, ValueError):
    """A dataset that cannot be trained on as configured; the message names the file or the counts."""


class RequestError(OstraconError, ValueError):
    """A request (ids to delete, an output path) that cannot be carried out as given; nothing changed."""


class StateDirError(OstraconError):
    """A state or output directory that cannot be used (not writable, not a directory)."""


class ClusterError(OstraconError, RuntimeError):
    """The Ray cluster cannot be reached, or cannot host the workers asked for."""


class SourceChangedError(OstraconError, RuntimeError):
    """The source data differs from what the state was trained on: exact deletion is impossible."""


class UnknownIdsError(RequestError):
    """Sample ids that are not in the training data (the message lists them, capped); nothing changed."""


class HeldOutIdsError(RequestError):
    """Sample ids of the held-out test split, never trained on, so there is nothing to delete."""


class IdempotencyConflictError(OstraconError):
    """An idempotency key reused with a different request body."""


class OperationNotFoundError(OstraconError, KeyError):
    """No operation has the given id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PreconditionError(OstraconError):
    """A request that is well formed but cannot be carried out in the current state (e.g. cancelling a
    running operation, or a deletion mode that is not available yet)."""
