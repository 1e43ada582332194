"""Deletion requests: what a request may contain, checked before anything changes."""

from __future__ import annotations

from typing import Iterable, Mapping

from ..errors import HeldOutIdsError, RequestError, UnknownIdsError


class UnlearningError(RequestError):
    """A deletion request that cannot be carried out as given; nothing was changed."""


class UnknownIdsUnlearningError(UnlearningError, UnknownIdsError):
    """Ids not in the training data."""


class HeldOutIdsUnlearningError(UnlearningError, HeldOutIdsError):
    """Ids of the held-out test split."""


def _preview(items: list[str], limit: int = 20) -> str:
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(repr(i) for i in items[:limit]) + more


def validate_request(ids: Iterable[str], placement: Mapping[str, tuple], deleted: Mapping | set,
                     test_ids: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """Split a request into (ids to delete now, ids already deleted); raise on anything malformed.

    ``placement`` maps every training id of the source data (deleted ones included) to its
    ``(group, worker, slice)``; ``deleted`` holds the ids the ledger already deletes."""
    ids = list(ids)
    if not ids:
        raise UnlearningError("empty deletion request: give at least one sample id")
    bad_type = [repr(i) for i in ids if not isinstance(i, str) or not i]
    if bad_type:
        raise UnlearningError(f"sample ids must be non-empty strings, got: {', '.join(bad_type[:20])}")
    seen, dupes = set(), []
    for i in ids:
        if i in seen and i not in dupes:
            dupes.append(i)
        seen.add(i)
    if dupes:
        raise UnlearningError(f"duplicate sample id(s) in the request: {_preview(dupes)}")
    held_out = set(test_ids)
    in_test = [i for i in ids if i not in placement and i in held_out]
    if in_test:
        raise HeldOutIdsUnlearningError("sample id(s) in the held-out test split, never trained on: "
                                        f"{_preview(in_test)}")
    unknown = [i for i in ids if i not in placement]
    if unknown:
        raise UnknownIdsUnlearningError(f"unknown sample id(s) (not in the training data): {_preview(unknown)}")
    already = [i for i in ids if i in deleted]
    return [i for i in ids if i not in deleted], already
