"""Ray's console output on the driver, routed through ostracon's logging.

Besides real failures, a Ray run prints lines that are noise to an ostracon
user: the token-auth notice, the core worker's ERROR about actor constructor
arguments in the object store (ray#53727; ostracon keeps them referenced, so
restarts work), and raylet messages such as "N PYTHON worker processes have
been started" (one process per worker actor is the design), the latter with
raw ANSI colour codes even when the output is not a terminal. Ray's Python
logger is set to errors only (``-v``: info); raylet messages and the core
worker's stderr go to the ``ostracon.cluster.ray_logs`` logger instead: known
noise at DEBUG (shown with ``-v``), anything else at WARNING, without colour
codes. A real failure is still shown, and ostracon reports worker failures
itself (``metrics.jsonl`` and a warning line).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from contextlib import contextmanager

log = logging.getLogger(__name__)

NOISE = (
    re.compile(r"has constructor arguments in the object store and max_restarts > 0"),
    re.compile(r"PYTHON worker processes have been started"),
)
ANSI_CODE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def ray_logging_level() -> int:
    """Level of Ray's own Python logger: errors only, unless ostracon logs at debug level (``-v``)."""
    return logging.INFO if logging.getLogger("ostracon").isEnabledFor(logging.DEBUG) else logging.ERROR


def relay(line: str) -> None:
    """One line of Ray output to ostracon's log: known noise at DEBUG, anything else at WARNING."""
    text = ANSI_CODE.sub("", line).strip()
    if text:
        level = logging.DEBUG if any(p.search(text) for p in NOISE) else logging.WARNING
        log.log(level, "ray: %s", text)


def route_driver_messages() -> None:
    """Send the raylet/autoscaler messages Ray prints on the driver's stdout through :func:`relay`."""
    try:
        from ray._private import worker as ray_worker

        original = ray_worker.print_to_stdstream
    except (ImportError, AttributeError):  # another Ray version: its messages stay as Ray prints them
        return
    if getattr(original, "ostracon_relay", False):
        return

    def print_to_stdstream(data, ignore_prefix):
        if data.get("pid") in ("raylet", "autoscaler"):
            for line in data.get("lines", []):
                relay(line)
        else:
            original(data, ignore_prefix)

    print_to_stdstream.ostracon_relay = True  # type: ignore[attr-defined]  # marks ours: patch once
    ray_worker.print_to_stdstream = print_to_stdstream


@contextmanager
def stderr_relayed():
    """Capture file descriptor 2 meanwhile and relay it line by line: Ray's C++ core worker echoes its
    ERROR lines to stderr with no switch to turn that off (they are also in its log file)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", errors="replace").splitlines():
                relay(line)
