"""A state directory's guard rails: one writer at a time, and no half-made directories.

``.lock`` is held with an exclusive ``fcntl`` lock by every command that reads or changes the
state (``train -o``, ``unlearn``, ``verify``, ``serve``); a second process fails at once with the
holder's pid and command. ``INCOMPLETE`` marks a directory whose training never finished (it is
written first and removed last): later commands refuse it instead of misreading a half-state.

A new state directory is created 0700 and the lock file 0600 whatever the umask; the files inside
take the process umask, which ``ostracon train``/``serve``/``unlearn`` set to 077 (they hold raw rows
and the ledger of deleted ids).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from ostracon.nodes.durable import fsync_dir, write_bytes_atomic

from ..errors import StateDirError

__all__ = ["INCOMPLETE_FILE", "LOCK_FILE", "StateDirError", "StateLockedError", "clear_incomplete", "exclusive",
           "holder", "mark_incomplete", "prepare_new", "require_complete", "require_state"]

LOCK_FILE = ".lock"
INCOMPLETE_FILE = "INCOMPLETE"


class StateLockedError(StateDirError):
    """Another process holds the state directory's lock."""


@contextmanager
def exclusive(state_dir: str | os.PathLike[str], command: str) -> Iterator[None]:
    """Hold the state directory's lock for the block; fail fast naming the holder if it is taken."""
    state_dir = os.fspath(state_dir)
    path = os.path.join(state_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StateDirError(f"cannot open the lock file {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            info = _read_holder(fd)
            if info.get("command") == "serve":
                raise StateLockedError(f"{state_dir} is served by {_holder(fd)}: send deletions to that server with "
                                       "`ostracon delete --target HOST:PORT --ids ...` (its address is in "
                                       f"{os.path.join(state_dir, 'server.json')})") from None
            raise StateLockedError(f"{state_dir} is in use by {_holder(fd)}; one command at a time per "
                                   "state directory (wait for it, or use `ostracon delete` against a server)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command, "since": time.time()}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the flock (as a crash would)


def holder(state_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Who holds the lock now (``{"pid", "command", "since"}``), or None when it is free."""
    path = os.path.join(os.fspath(state_dir), LOCK_FILE)
    if not os.path.exists(path):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        return cast(dict[str, Any], json.loads(os.pread(fd, 4096, 0).decode() or "{}"))
    except (ValueError, UnicodeDecodeError):
        return {}


def _holder(fd: int) -> str:
    info = _read_holder(fd)
    if not info.get("pid"):
        return "another process"
    return f"pid {info['pid']} (`ostracon {info.get('command', '?')}`)"


def mark_incomplete(state_dir: str, reason: str) -> None:
    write_bytes_atomic(os.path.join(state_dir, INCOMPLETE_FILE), (reason + "\n").encode())


def clear_incomplete(state_dir: str) -> None:
    os.remove(os.path.join(state_dir, INCOMPLETE_FILE))
    fsync_dir(state_dir)


def require_complete(state_dir: str) -> None:
    """Refuse a directory whose training never finished, or that holds no trained state."""
    marker = os.path.join(state_dir, INCOMPLETE_FILE)
    if os.path.exists(marker):
        with open(marker) as fh:
            reason = fh.read().strip()
        raise StateDirError(f"{state_dir} holds an incomplete training run ({reason}); "
                            "remove the directory and train again")
    if not os.path.isdir(state_dir):
        raise StateDirError(f"state directory not found: {state_dir}")


def require_state(state_dir: str | os.PathLike[str]) -> None:
    """Refuse (before taking its lock, so nothing is created) a path that is no state directory."""
    state_dir = os.fspath(state_dir)
    if not os.path.isdir(state_dir):
        raise StateDirError(f"{state_dir} is not a trained state directory (it does not exist); "
                            "run `ostracon train -o` first")
    if not any(os.path.exists(os.path.join(state_dir, n)) for n in ("config.json", "ledger.sqlite", INCOMPLETE_FILE)):
        raise StateDirError(f"{state_dir} is not a trained state directory (no config.json); "
                            "run `ostracon train -o` first")


def prepare_new(outdir: str) -> None:
    """Create ``outdir`` for a new run; refuse a non-empty directory (it may hold someone's data)."""
    if os.path.exists(outdir):
        if not os.path.isdir(outdir):
            raise StateDirError(f"{outdir} exists and is not a directory")
        leftovers = sorted(os.listdir(outdir))
        if "ledger.sqlite" in leftovers and INCOMPLETE_FILE not in leftovers:
            raise StateDirError(f"{outdir} already holds a trained state; choose a new output directory")
        if leftovers:
            hint = " (an earlier run that did not finish)" if INCOMPLETE_FILE in leftovers else ""
            raise StateDirError(f"{outdir} is not empty{hint}: train into a new directory "
                                f"(found {', '.join(leftovers[:5])}{' ...' if len(leftovers) > 5 else ''})")
    os.makedirs(outdir, mode=0o700, exist_ok=True)  # the leaf only: parents keep the umask's mode
