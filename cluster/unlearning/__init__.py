"""Unlearning: deletion requests against a trained state directory.

- :mod:`.requests`: what a request may contain (checked before anything changes)
- :mod:`.state`: a state directory opened under its lock, and the audits of its derived files
- :mod:`.exact`: exact deletion (SISA replay) as recoverable steps, and recovery
- :mod:`.approximate`: approximate deletion (a method run on the affected groups), the exact fallback
  and unlearning debt; :mod:`.gate`: the check every approximate update must pass; :mod:`.evaluation`:
  UA/RA/TA/MIA, gaps and KL to exact
- :mod:`.certificates`: certificates, written exclusively from the ledger
- :mod:`.verify`: the audit of the whole chain, ending with a retrain from scratch

``unlearn_state_dir`` and ``verify_state_dir`` are the entry points the CLI (and the coordinator)
call; ``MODES`` maps each deletion mode to the function that carries it out.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterable, Mapping

from .. import faults, statedir
from ..backends import Backend
from .approximate import delete_approximate
from .certificates import KIND, format_certificate
from .exact import recover, run_request
from .requests import UnlearningError, validate_request
from .state import SourceChangedError, TrainedState, open_state
from .verify import format_report, verify_state_dir

__all__ = ["MODES", "UnlearningError", "SourceChangedError", "format_certificate", "format_report", "locate",
           "unlearn_state_dir", "verify_state_dir", "validate_request"]


def delete_exact(st: TrainedState, ids: list[str], *, backend: Backend | None = None, on_round=None,
                 began: float | None = None, method: str | None = None) -> dict:
    """Validate, journal and carry out an exact deletion of ``ids`` on an opened state."""
    if method:
        raise UnlearningError(f"exact deletion takes no method (got {method!r}); methods are for the approximate modes")
    fresh, already = validate_request(ids, st.plan.placement, st.deletions, st.plan.test_ids.tolist())
    if not fresh:
        version, _ = st.ledger.latest_version()
        return {"kind": KIND, "mode": "exact", "status": "noop", "requested": list(ids), "already_deleted": already,
                "model_version": version}
    request = st.ledger.journal(list(ids), {i: st.plan.placement[i] for i in fresh}, "exact")
    faults.point("deletion.journaled")
    st.refresh()  # the workers' data no longer holds the journaled ids
    return run_request(st, request, backend, on_round, began)


def delete_approximately(st: TrainedState, ids: list[str], **kwargs) -> dict:
    """Mode ``approximate``: a gated approximate update, exact if it fails the gate."""
    return delete_approximate(st, ids, **kwargs)


def delete_approximately_then_exactly(st: TrainedState, ids: list[str], **kwargs) -> dict:
    """Mode ``approximate_then_exact``: the approximate update published at once, then the exact replay."""
    return delete_approximate(st, ids, then_exact=True, **kwargs)


# One function per mode, same signature: (state, ids, *, backend, on_round, began, method) -> certificate.
MODES: dict[str, Callable[..., dict]] = {"exact": delete_exact, "approximate": delete_approximately,
                                         "approximate_then_exact": delete_approximately_then_exactly}


def unlearn_state_dir(state_dir: str | os.PathLike, ids: Iterable[str] = (), mode: str = "exact", *,
                      overrides: Mapping | None = None, backend: Backend | None = None,
                      on_round=None, resume_only: bool = False, method: str | None = None) -> dict:
    """Delete ``ids`` from a trained state directory; returns the certificate (also written to disk).

    Holds the directory's lock throughout. First finishes any request an earlier command left
    unfinished (``resume_only=True`` does only that and returns ``{"recovered": [certificates]}``)."""
    if mode not in MODES:
        raise UnlearningError(f"unknown mode {mode!r}; supported: {', '.join(MODES)}")
    if method and mode == "exact":
        raise UnlearningError(f"--method {method} needs an approximate mode (--mode approximate or approximate_then_exact)")
    began = time.perf_counter()
    statedir.require_state(state_dir)
    with statedir.exclusive(state_dir, "unlearn"):
        st = open_state(state_dir, overrides)
        try:
            recovered = recover(st, backend, on_round)
            if recovered:
                backend = None  # it ran the recovery's replay and was shut down
            if resume_only:
                return {"status": "recovered", "recovered": recovered}
            if method:
                st.config.unlearning.method_params(method)  # an unknown method fails before anything changes
            cert = MODES[mode](st, list(ids), backend=backend, on_round=on_round, began=began, method=method)
            if recovered:
                cert["recovered"] = [c["request_id"] for c in recovered]
            return cert
        finally:
            st.close()


def locate(plan) -> dict[str, tuple[int, int, int]]:
    """Every training id of the source data -> (group, worker, slice)."""
    return dict(plan.placement)
