"""Deletion requests: what a request may contain, checked before anything changes.

The one validator of a request's meaning (docs/design.md, invariant 5), used by the command line and
the coordinator alike: :func:`parse_request` checks the mode, the method and the ids as given;
:func:`validate_request` checks the ids against the trained data. The gRPC servicer checks only the
shape of its messages (empty fields, enum values) and hands the rest here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sized
from dataclasses import dataclass
from itertools import islice
from typing import Any

from ostracon.nodes.approximate_params import PARAMS

from ..errors import ConfigError, HeldOutIdsError, RequestError, UnknownIdsError
from ..vocabulary import DeletionMode


class UnlearningError(RequestError):
    """A deletion request that cannot be carried out as given; nothing was changed. ``field`` names the
    part of the request at fault (``sample_ids``, ``mode``, ``method``) for callers that speak in fields."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field

    def in_field(self) -> UnlearningError:
        """The same error, its message prefixed with the field at fault (the gRPC service's convention)."""
        if self.field is None:
            return self
        return type(self)(f"{self.field}: {self}", self.field)


class LimitExceededError(UnlearningError):
    """An input over a documented size limit (too many ids, an id or key too long, too many Predict rows);
    the message names the limit. A :class:`RequestError`: the gRPC layer may map it to RESOURCE_EXHAUSTED."""


class UnknownIdsUnlearningError(UnlearningError, UnknownIdsError):
    """Ids not in the training data."""


class HeldOutIdsUnlearningError(UnlearningError, HeldOutIdsError):
    """Ids of the held-out test split."""


class UnknownMethodError(UnlearningError, ConfigError):
    """An approximate-unlearning method that does not exist (``unlearning.method`` names the same set)."""


@dataclass(frozen=True)
class DeletionRequest:
    """A well-formed request: its ids (in the order given), how to carry it out, and with which method."""

    ids: tuple[str, ...]
    mode: DeletionMode
    method: str | None = None  # approximate modes only; None: the config's unlearning.method


def _preview(items: list[str], limit: int = 20) -> str:
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(shown(i) for i in items[:limit]) + more


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to about ``limit`` characters (an error message never echoes a huge input)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_mode(mode: str | DeletionMode) -> DeletionMode:
    """A deletion mode from its name; an unknown one is an :class:`UnlearningError` listing the choices."""
    try:
        return DeletionMode(mode)
    except ValueError:
        raise UnlearningError(f"unknown mode {mode!r}; supported: {', '.join(DeletionMode.values())}",
                              "mode") from None


def parse_request(ids: Iterable[Any], mode: str | DeletionMode = DeletionMode.EXACT, method: str | None = None, *,
                  max_ids: int | None = None, merge_duplicates: bool = False,
                  max_id_chars: int | None = None) -> DeletionRequest:
    """Check what a request says on its own: a known mode, a method only with an approximate mode and one
    that exists, at least one id, every id a non-empty string, no duplicate (``merge_duplicates``: the
    service treats a request as a set of ids), at most ``max_ids`` ids, none longer than ``max_id_chars``.

    ``max_ids`` bounds the ids AS GIVEN, duplicates included: it is checked before any per-id work (in O(1)
    for a sized collection; an iterator is read at most ``max_ids + 1`` items far). None: unlimited (the
    command line); the coordinator passes its limits (``Deployment(max_ids_per_request=, max_id_chars=)``)."""
    chosen = parse_mode(mode)
    method = method or None
    if method is not None and not chosen.is_approximate:
        raise UnlearningError(f"method {shown(method)} needs an approximate mode ({DeletionMode.APPROXIMATE} or "
                              f"{DeletionMode.APPROXIMATE_THEN_EXACT}); exact deletion takes no method", "method")
    if method is not None and method not in PARAMS:
        raise UnknownMethodError(f"unknown unlearning method {shown(method)}; choose one of: {', '.join(PARAMS)}",
                                 "method")
    if max_ids is not None:
        if isinstance(ids, Sized):
            count = f"{len(ids)}"
            over = len(ids) > max_ids
        else:  # read no further than one past the limit
            ids = list(islice(ids, max_ids + 1))
            count, over = f"more than {max_ids}", len(ids) > max_ids
        if over:
            raise LimitExceededError(f"{count} ids exceed max_ids_per_request = {max_ids} (counted as given, "
                                     "duplicates included); split the request", "sample_ids")
    ids = list(ids)
    if not ids:
        raise UnlearningError("empty deletion request: give at least one sample id", "sample_ids")
    bad_type = [shown(i) for i in islice((i for i in ids if not isinstance(i, str) or not i), 20)]
    if bad_type:
        raise UnlearningError(f"sample ids must be non-empty strings, got: {', '.join(bad_type)}",
                              "sample_ids")
    if max_id_chars is not None:
        for index, i in enumerate(ids):
            if len(i) > max_id_chars:
                raise LimitExceededError(f"sample_ids[{index}] has {len(i)} characters, over max_id_chars = "
                                         f"{max_id_chars} (it starts {shown(i, 40)})", "sample_ids")
    if merge_duplicates:
        ids = list(dict.fromkeys(ids))
    else:
        seen: set[str] = set()
        dupes: dict[str, None] = {}
        for i in ids:
            if i in seen:
                dupes[i] = None
            seen.add(i)
        if dupes:
            raise UnlearningError(f"duplicate sample id(s) in the request: {_preview(list(dupes))}", "sample_ids")
    return DeletionRequest(tuple(ids), chosen, method)


def validate_request(ids: Iterable[Any], placement: Mapping[str, object], deleted: Collection[str],
                     test_ids: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """Split a request into (ids to delete now, ids already deleted); raise on anything malformed.

    ``placement`` maps every training id of the source data (deleted ones included) to where it lives;
    ``deleted`` holds the ids the ledger already deletes; ``test_ids`` (the held-out split) is read only
    when some id is not a training id, to say which error it is."""
    request = parse_request(ids)
    unknown = [i for i in request.ids if i not in placement]
    if unknown:  # only a refused request reads the held-out ids: a valid one costs its own ids
        held_out = set(unknown).intersection(str(i) for i in test_ids)
        in_test = [i for i in unknown if i in held_out]
        if in_test:
            raise HeldOutIdsUnlearningError("sample id(s) in the held-out test split, never trained on: "
                                            f"{_preview(in_test)}")
        raise UnknownIdsUnlearningError(f"unknown sample id(s) (not in the training data): {_preview(unknown)}")
    already = [i for i in request.ids if i in deleted]
    return [i for i in request.ids if i not in deleted], already
