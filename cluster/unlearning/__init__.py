"""Unlearning: deletion requests against a trained state directory.

- :mod:`.requests`: what a request may contain (checked before anything changes)
- :mod:`.trained`: a state directory opened under its lock, and the audits of its derived files
- :mod:`.execute`: the one path of a request (validate, journal, carry out in its mode), shared by the
  command line and the coordinator
- :mod:`.exact`: exact deletion (SISA replay) as recoverable steps, and recovery
- :mod:`.approximate`: approximate deletion (a method run on the affected groups), the exact fallback
  and unlearning debt; :mod:`.gate`: the check every approximate update must pass; :mod:`.evaluation`:
  UA/RA/TA/MIA, gaps and KL to exact
- :mod:`.certificates`: certificates, written exclusively from the ledger
- :mod:`.verify`: the audit of the whole chain, ending with a retrain from scratch

``unlearn_state_dir`` and ``verify_state_dir`` are the command line's entry points.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import SourceChangedError
from ..execution.backend import Backend
from ..execution.hooks import NO_HOOKS, Hooks
from ..execution.plan import RunPlan
from ..storage import statedir
from ..storage.records import Certificate
from ..vocabulary import DeletionMode
from .certificates import certificate_path, format_certificate
from .exact import recover
from .execute import execute
from .requests import UnlearningError, parse_request, validate_request
from .trained import open_state
from .verify import format_report, verify_state_dir

__all__ = ["SourceChangedError", "UnlearningError", "format_certificate", "format_report", "locate",
           "unlearn_state_dir", "validate_request", "verify_state_dir"]


def unlearn_state_dir(state_dir: str | os.PathLike[str], ids: Iterable[str] = (),
                      mode: str | DeletionMode = DeletionMode.EXACT, *, overrides: Mapping[str, Any] | None = None,
                      backend: Backend | None = None, hooks: Hooks = NO_HOOKS, resume_only: bool = False,
                      method: str | None = None) -> dict[str, Any]:
    """Delete ``ids`` from a trained state directory; returns the certificate (also written to disk) as a
    dict with its ``certificate_path``.

    Holds the directory's lock throughout. First finishes any request an earlier command left
    unfinished (``resume_only=True`` does only that and returns ``{"recovered": [certificates]}``);
    the certificate then lists their ids under ``recovered``."""
    began = time.perf_counter()
    request = None if resume_only else parse_request(ids, mode, method)
    statedir.require_state(state_dir)
    with statedir.exclusive(state_dir, "unlearn"):
        st = open_state(state_dir, overrides)
        try:
            recovered = recover(st, backend=backend, hooks=hooks)
            if recovered:
                backend = None  # it ran the recovery's replay and was shut down
            if request is None:
                return {"status": "recovered", "recovered": [_as_dict(state_dir, c) for c in recovered]}
            outcome = execute(st, request, backend=backend, hooks=hooks, began=began)
            out = _as_dict(state_dir, outcome) if isinstance(outcome, Certificate) else outcome.to_dict()
            if recovered:
                out["recovered"] = [c.request_id for c in recovered]
            return out
        finally:
            st.close()


def _as_dict(state_dir: str | os.PathLike[str], cert: Certificate) -> dict[str, Any]:
    return cert.to_dict() | {"certificate_path": certificate_path(state_dir, cert)}


def locate(plan: RunPlan) -> dict[str, tuple[int, int, int]]:
    """Every training id of the source data -> (group, worker, slice)."""
    return plan.placement.as_dict()
