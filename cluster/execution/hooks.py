"""One hooks object for long work (training, replays, approximate updates), as Ray Train's callbacks:
override what you need; every hook is a no-op here. Hooks run on the thread doing the work, between
two durable steps, so raising from one stops the work there (the deployment's ``close(drain=False)``
uses that)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backend import Backend


class Hooks:
    """Called by training, exact replays and approximate updates; every method is a no-op here."""

    def on_round(self, t: int, backend: Backend) -> None:
        """After global round ``t`` of every active group (a redone stage repeats its rounds)."""

    def on_stage(self, stage: int, first: int, last: int) -> None:
        """After a replay checkpointed ``stage`` (of ``first..last``): progress of a deletion."""

    def on_published(self, version: int) -> None:
        """After a model version was committed to the ledger (approximate_then_exact: its first phase)."""


class RoundHooks(Hooks):
    """Hooks that call ``fn(t, backend)`` after each round (tests and fault drills kill actors there)."""

    def __init__(self, fn: Callable[[int, Backend], None]):
        self.fn = fn

    def on_round(self, t: int, backend: Backend) -> None:
        self.fn(t, backend)


NO_HOOKS = Hooks()
