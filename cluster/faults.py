"""Fault injection at the step boundaries of state-changing work (tests and drills only).

Every durable step of training and deletion calls :func:`point` with a name such as
``"deletion.tombstoned:worker-4"``. Nothing happens unless a fault is armed:

- ``OSTRACON_FAULT=PATTERN`` (an ``fnmatch`` pattern) in the environment makes the process
  ``kill -9`` itself at the first matching point: a real crash, for subprocess drills
  (``OSTRACON_FAULT_ACTION=sleep:S`` pauses there instead, holding the state lock);
- :func:`arm` does the same in-process, raising :class:`InjectedFault` (a ``BaseException``, so no
  ``except Exception`` on the way can swallow it) — fast enough to try every boundary in a test.

:func:`recording` lists the points a piece of work passes, so a test can enumerate the boundaries
instead of hard-coding them.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "OSTRACON_FAULT"
ACTION_ENV = "OSTRACON_FAULT_ACTION"  # "kill" (default) or "sleep:SECONDS"

_armed: str | None = None
_recorded: list[str] | None = None


class InjectedFault(BaseException):
    """The simulated crash of :func:`arm`: nothing after the point ran."""


def point(name: str) -> None:
    """A step boundary: everything before it is durable, nothing after it has started."""
    if _recorded is not None:
        _recorded.append(name)
    if _armed is not None and fnmatch.fnmatchcase(name, _armed):
        raise InjectedFault(name)
    pattern = os.environ.get(ENV)
    if pattern and fnmatch.fnmatchcase(name, pattern):
        action = os.environ.get(ACTION_ENV, "kill")
        if action.startswith("sleep:"):  # hold the point (and the state lock) for a concurrency drill
            time.sleep(float(action.partition(":")[2]))
            return
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def armed(pattern: str) -> Iterator[None]:
    """Raise :class:`InjectedFault` at the first point matching ``pattern`` inside the block."""
    global _armed
    previous, _armed = _armed, pattern
    try:
        yield
    finally:
        _armed = previous


@contextmanager
def recording() -> Iterator[list[str]]:
    """Collect the names of the points passed inside the block, in order."""
    global _recorded
    previous, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = previous
