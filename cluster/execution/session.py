"""A training session: the rounds and stages of a set of groups on a started backend.

Written once against the backend interface (``backend.py``); what a group does with a round's
vectors is its training protocol's business (``protocols.py``: MoNNA or a parameter server).

Byzantine workers that run an attack see the honest vectors of the round
first (omniscient attacker). A worker that crashed or missed the round
deadline is simply absent from that round. Groups (SISA shards) never
exchange vectors; they advance in lockstep to share the backend's latency.

Exact under faults (docs/design.md, invariant 7): a published model must be
reproducible by a replay. Two kinds of events depend on timing:

- a worker that missed a round's deadline (``LATE``: it ran the step, its
  vector was dropped) or was still busy with a late step (``BUSY``: it did not
  run this one). Training records them in a *schedule*; replays and ``verify``
  run with ``replay_schedule=True``, wait for every worker, and impose the
  recorded events instead, so the state evolves exactly as it did. A worker that sends nothing
  (crashed, late, busy) spends one unit of its group's fault budget for that round
  (``round_budget``); each round's budget that differs from the declared ``f`` is recorded in the
  schedule too, and replays impose it.
- a worker actor that died (and was restarted by Ray, with a fresh model).
  Its group's stage is redone from the states the group had when the stage
  began (``max_stage_attempts`` tries), so no published model ever comes from a
  run with a failure in it; the redo is recorded in ``failures``.

An honest worker whose shard is empty (every sample deleted) takes no step
but keeps receiving its group's mix, so it follows the group and never serves
a stale model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ostracon.nodes.messages import Message
from ostracon.nodes.worker import NO_ANSWER, NO_DATA, Worker, round_budget

from ..errors import ClusterError
from ..storage.checkpoints import CheckpointStore, WorkerState
from ..storage.records import CheckpointInfo, Schedule
from .backend import BUSY, DIED, LATE, Backend
from .plan import RunPlan, ids_digest, stage_rounds, stage_start
from .protocols import TrainingProtocol, make_protocol

log = logging.getLogger(__name__)

__all__ = ["Failure", "Session", "StageFailedError", "elapsed"]


TIMING_EVENTS = (LATE, BUSY)
# A worker that should have sent a vector and did not: faulty in that round, it spends the budget.
SILENT = (NO_ANSWER, LATE, BUSY)


class StageFailedError(ClusterError):
    """A group's stage kept failing (a worker died every attempt, or could not come back)."""


@dataclass
class Failure:
    round: int
    worker: int
    reason: str

    def to_dict(self) -> dict:
        return {"round": self.round, "worker": self.worker, "reason": self.reason}


@dataclass
class Session:
    """Drives the rounds of a set of groups on a started backend."""

    plan: RunPlan
    backend: Backend
    schedule: Schedule = field(default_factory=Schedule)
    replay_schedule: bool = False  # impose ``schedule`` (replays, verify) instead of recording one
    max_stage_attempts: int = 3
    server_lr: float | None = None  # approximate unlearning: the server steps with the method's lr
    incoming: dict[int, Message] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    gradient_evaluations: dict[int, int] = field(default_factory=dict)
    protocol: TrainingProtocol = field(init=False)

    def __post_init__(self) -> None:
        self.protocol = make_protocol(self.plan, self.backend, self.server_lr)

    # ----- stages ----------------------------------------------------------------------------------
    def run_stage(self, groups: Sequence[int], stage: int, start: Mapping[int, dict],
                  on_round: Callable[[int], None] | None = None) -> dict[int, dict]:
        """All rounds of ``stage`` for ``groups`` from the trainers' ``start`` states; returns every
        trainer's end-of-stage state.

        A group in which a worker died (or restarted: a new incarnation) is put back to ``start`` and
        its stage redone, so the states returned are exactly those of a run without the failure."""
        todo = sorted(groups)
        known = self._begin(todo, start)
        ends: dict[int, dict] = {}
        failed: set[int] = set()
        for attempt in range(1, self.max_stage_attempts + 1):
            failed = self._run_rounds(todo, stage, on_round)
            done = [g for g in todo if g not in failed]
            if done:
                states = self.states(done)
                now = self.backend.call([j for g in done for j in self._members(g)], Worker.incarnation)
                failed |= {g for g in done if any(now[j] != known[j] for j in self._members(g))}
                ends.update({j: s for j, s in states.items() if self.plan.specs[j].group not in failed})
            if not failed:
                return ends
            for g in sorted(failed):
                self.failures.append(Failure(-1, -1, f"group {g}: stage {stage} redone from its start "
                                                     f"after a worker failure (attempt {attempt})"))
                log.warning("group %d: a worker failed during stage %d; redoing the stage from its start", g, stage)
            todo = sorted(failed)
            for g in todo:
                self.schedule.forget(g, stage)  # the failed attempt's events never happened
            if attempt < self.max_stage_attempts:
                known.update(self._begin(todo, start))
        raise StageFailedError(f"stage {stage} of group(s) {sorted(failed)} failed {self.max_stage_attempts} times "
                               "(a worker died every attempt); nothing was published")

    def _begin(self, groups: list[int], start: Mapping[int, dict]) -> dict[int, str]:
        """Load ``start`` into the groups' trainers; returns the incarnations it was loaded into (read
        first: a worker that restarts after this shows a different one at the end of the stage)."""
        self.flush(groups)
        known = self.backend.call([j for g in groups for j in self._members(g)], Worker.incarnation)
        self.load_states({j: start[j] for g in groups for j in self.plan.stateful(g)})
        return known

    def _members(self, group: int) -> list[int]:
        return self.plan.group_workers(group)

    def _run_rounds(self, groups: list[int], stage: int, on_round) -> set[int]:
        """The stage's rounds; a group in which a worker died stops at once. Returns the failed groups."""
        first = stage_start(self.plan.config, stage)
        active, failed = list(groups), set()
        for step in range(stage_rounds(self.plan.config)[stage]):
            if not active:
                break
            failed |= self.run_round(active, stage, step, first + step)
            active = [g for g in active if g not in failed]
            if on_round is not None:
                on_round(first + step)
        self.flush(active)
        return failed

    def run_round(self, groups: Sequence[int], stage: int, step: int, t: int) -> set[int]:
        """One round for ``groups``; returns the groups in which a worker died."""
        plan, cfg = self.plan, self.plan.config.training
        trainers = [j for g in groups for j in plan.trainers(g)]
        imposed = self.schedule.for_stage(groups, stage, t) if self.replay_schedule else {}
        called = [j for j in trainers if imposed.get(j) != BUSY]
        deadline = None if self.replay_schedule else (cfg.round_deadline_s or None)
        sent = self.backend.step(called, stage, step, t, {j: self.incoming.get(j) for j in called}, deadline)
        self.incoming = {j: m for j, m in self.incoming.items() if j not in trainers}
        for j, status in imposed.items():  # the recorded events, whatever the timing was this time
            sent.vectors.pop(j, None)
            sent.failures[j] = status
        if not self.replay_schedule:
            self._record_timing(stage, t, sent.failures)
        self._log(t, sent.failures)
        failed = {plan.specs[j].group for j, r in sent.failures.items() if r == DIED}
        for g in groups:
            if g in failed:
                continue
            group_trainers = [j for j in plan.trainers(g) if j in sent.vectors]
            self.gradient_evaluations[g] = (
                self.gradient_evaluations.get(g, 0) + cfg.batch_size * len(group_trainers)
            )
            honest = [sent.vectors[j] for j in plan.honest(g) if j in sent.vectors]
            attackers = plan.attackers(g)
            silent = sum(sent.failures.get(j) in SILENT for j in plan.trainers(g))
            budget = self._budget(g, stage, t, silent)
            attacks = self.backend.attack(attackers, honest, t, budget) if attackers and honest else None
            vectors = {j: sent.vectors[j] for j in group_trainers}
            if attacks is not None:
                self._log(t, attacks.failures)
                if any(r == DIED for r in attacks.failures.values()):
                    failed.add(g)
                    continue
                vectors.update(attacks.vectors)
                quiet = sum(attacks.failures.get(j) == NO_ANSWER for j in attackers)
                budget = self._budget(g, stage, t, silent + quiet) if quiet else budget
            # Fixed order (by worker index): float sums must see rows in the same order on every backend.
            ordered = [vectors[j] for j in sorted(vectors)]
            if not ordered:
                continue
            followers = [j for j in plan.honest(g) if sent.failures.get(j) == NO_DATA] if honest else []
            self.incoming.update(self.protocol.combine(g, ordered, t, group_trainers + followers, budget))
            if not self.replay_schedule and budget != self.plan.config.training.f:
                self.schedule.budgets.setdefault((g, stage), {})[t] = budget
        return failed

    def _budget(self, group: int, stage: int, t: int, silent: int) -> int:
        """Round ``t``'s fault budget for ``group`` with ``silent`` workers silent: the recorded one in a
        replay; the declared ``f`` for a state trained before silent workers spent it."""
        declared = self.plan.config.training.f
        if self.replay_schedule:
            recorded = self.schedule.budgets.get((group, stage), {}).get(t)
            if recorded is not None:
                return recorded
        if not self.schedule.silent_spend:
            return declared
        return round_budget(declared, silent)

    def _record_timing(self, stage: int, t: int, failures: dict[int, str]) -> None:
        for j, reason in failures.items():
            if reason in TIMING_EVENTS:
                g = self.plan.specs[j].group
                self.schedule.events.setdefault((g, stage), {}).setdefault(t, {})[j] = reason

    def flush(self, groups: Sequence[int]) -> None:
        """Deliver pending messages so every worker's parameters are the round's final ones."""
        pending = {j: self.incoming.pop(j) for g in groups for j in self.plan.trainers(g) if j in self.incoming}
        if pending:
            self.backend.deliver(pending)

    def _log(self, t: int, failures: dict[int, str]) -> None:
        for j, reason in sorted(failures.items()):
            if reason == NO_DATA:
                continue  # not a failure: the worker follows its group
            self.failures.append(Failure(t, j, reason))
            level = logging.DEBUG if self.plan.specs[j].is_byzantine and reason != DIED else logging.WARNING
            log.log(level, "round %d: worker %d absent (%s)", t, j, reason)

    # ----- reading and writing models ----------------------------------------------------------------
    def states(self, groups: Sequence[int]) -> dict[int, dict[str, np.ndarray]]:
        """The whole state of every stateful worker of ``groups`` (after ``flush``): trainers, and attackers
        that keep state across rounds."""
        return self.backend.call([j for g in groups for j in self.plan.stateful(g)], Worker.get_state)

    def load_states(self, states: Mapping[int, WorkerState]) -> None:
        self.backend.call_each(Worker.set_state, {j: (s,) for j, s in states.items()})
        for j in states:
            self.incoming.pop(j, None)
        for g in sorted({self.plan.specs[j].group for j in states}):
            self.protocol.restore(g, states)

    def checkpoint(self, store: CheckpointStore, states: Mapping[int, WorkerState], groups: Sequence[int],
                   stage: int, suffix: str = "") -> dict[int, CheckpointInfo]:
        """Checkpoint every group of ``groups`` at the end of ``stage`` from its workers' ``states`` (as
        :meth:`run_stage` returns them), with the digest of the ids its trainers trained on."""
        infos = {}
        for g in groups:
            ids = self.backend.call(self.plan.trainers(g), Worker.data_ids, stage)
            digest = ids_digest(i for found in ids.values() for i in found)
            infos[g] = store.save(g, stage, {j: states[j] for j in self.plan.stateful(g)},
                                  seed=self.plan.config.seed, data_digest=digest, suffix=suffix)
        return infos

    def take_failures(self) -> list[dict[str, Any]]:
        out, self.failures = [f.to_dict() for f in self.failures], []
        return out


def elapsed(since: float) -> float:
    return round(time.perf_counter() - since, 3)
