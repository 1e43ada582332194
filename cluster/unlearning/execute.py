"""The one path of a deletion request, shared by the command line and the coordinator.

:func:`execute` validates a well-formed :class:`~.requests.DeletionRequest` against the trained data,
journals it (the acknowledgement: from here on the next command finishes it if this one dies) and
carries it out in its mode: exact replay, or a gated approximate update (exact if it fails the gate;
``approximate_then_exact``: published at once, then replayed). Ids that are all deleted already
answer :class:`~..storage.records.NothingToDelete` and change nothing.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from .. import faults
from ..execution.backend import Backend
from ..execution.hooks import NO_HOOKS, Hooks
from ..storage.records import Certificate, NothingToDelete, Request
from .approximate import MethodParams, carry_out
from .exact import LiveWorkers, run_request
from .requests import DeletionRequest, validate_request
from .trained import TrainedState

__all__ = ["carry_out_request", "execute", "journal_request"]


def journal_request(st: TrainedState, request: DeletionRequest,
                    also: Callable[[sqlite3.Connection, int], None] | None = None) -> Request | NothingToDelete:
    """Check ``request``'s ids against the trained data and journal the fresh ones (``also(db, request_id)``
    runs in the journaling transaction); nothing is journaled when every id was deleted already."""
    fresh, _ = validate_request(request.ids, st.plan.placement, st.deletions, st.plan.test_ids)
    if not fresh:
        version, _ = st.ledger.latest_version()
        return NothingToDelete(request.mode, request.ids, version, method=request.method)
    journaled = st.ledger.journal(list(request.ids), st.placement_of(fresh), request.mode, also)
    faults.point("deletion.journaled")
    return journaled


def carry_out_request(st: TrainedState, request: Request, method: str | None = None, *,
                      backend: Backend | None = None, live: LiveWorkers | None = None, hooks: Hooks = NO_HOOKS,
                      began: float | None = None) -> Certificate:
    """Carry a freshly journaled request out in its mode; returns its certificate. ``method``: approximate
    modes only (default the config's ``unlearning.method``)."""
    began = time.perf_counter() if began is None else began
    if not request.mode.is_approximate:
        st.refresh()  # the workers' data no longer holds the journaled ids
        return run_request(st, request, backend=backend, live=live, hooks=hooks, began=began)
    # An approximate update reads the ids it forgets: the plan keeps them until the update is gated.
    method, params = _method(st, method)
    return carry_out(st, request, method, params, backend=backend, live=live, hooks=hooks, began=began)


def _method(st: TrainedState, method: str | None) -> tuple[str, MethodParams]:
    """The approximate method to run and its validated hyperparameters (ConfigError when unknown or invalid)."""
    name = method or st.config.unlearning.method
    return name, st.config.unlearning.method_params(name)


def execute(st: TrainedState, request: DeletionRequest, *, backend: Backend | None = None,
            live: LiveWorkers | None = None, hooks: Hooks = NO_HOOKS, began: float | None = None,
            also: Callable[[sqlite3.Connection, int], None] | None = None) -> Certificate | NothingToDelete:
    """Validate, journal and carry out ``request`` on an opened state (its lock held)."""
    began = time.perf_counter() if began is None else began
    # An unknown or invalid method fails before anything is journaled; resolved once, here.
    approximate = _method(st, request.method) if request.mode.is_approximate else None
    journaled = journal_request(st, request, also)
    if isinstance(journaled, NothingToDelete):
        return journaled
    if approximate is None:
        return carry_out_request(st, journaled, backend=backend, live=live, hooks=hooks, began=began)
    return carry_out(st, journaled, *approximate, backend=backend, live=live, hooks=hooks, began=began)
