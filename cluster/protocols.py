"""The training protocols, written once against the backend interface.

``monna``: decentralised. Every worker that trains sends its half-step model
to the others of its group and mixes what it received around its own vector
with the configured rule (``nna``: MoNNA). ``server``: a parameter server
aggregates the workers' momenta with any rule (+ pre-aggregation) and sends
the new parameters back; ``rule = "mean"`` is plain D-SGD.

Byzantine workers that run an attack see the honest vectors of the round
first (omniscient attacker). A worker that crashed or missed the round
deadline is simply absent from that round. Groups (SISA shards) never
exchange vectors; they advance in lockstep to share the backend's latency.

Exact under faults (DESIGN invariant 7): a published model must be
reproducible by a replay. Two kinds of events depend on timing:

- a worker that missed a round's deadline (``LATE``: it ran the step, its
  vector was dropped) or was still busy with a late step (``BUSY``: it did not
  run this one). Training records them in a *schedule*; replays and ``verify``
  run with ``replay_schedule=True``, wait for every worker, and impose the
  recorded events instead, so the state evolves exactly as it did.
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
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ostracon.aggregator import aggregate
from ostracon.nodes.worker import NO_DATA, initial_parameters, learning_rate, seeded_pre, tolerated_f

from .backends import BUSY, DIED, LATE, Backend
from .errors import ClusterError
from .plan import RunPlan, stage_rounds, stage_start

log = logging.getLogger(__name__)


# A schedule: (group, stage) -> round -> worker -> LATE or BUSY.
Schedule = dict[tuple[int, int], dict[int, dict[int, str]]]
TIMING_EVENTS = (LATE, BUSY)


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
    schedule: Schedule = field(default_factory=dict)
    replay_schedule: bool = False  # impose ``schedule`` (replays, verify) instead of recording one
    max_stage_attempts: int = 3
    incoming: dict[int, Any] = field(default_factory=dict)
    server_theta: dict[int, torch.Tensor] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    gradient_evaluations: dict[int, int] = field(default_factory=dict)
    server_lr: float | None = None  # approximate unlearning: the server steps with the method's lr

    def __post_init__(self) -> None:
        if self.plan.config.training.protocol == "server":
            for g in self.plan.groups:
                self.server_theta[g] = initial_parameters(self.plan.specs[self.plan.group_workers(g)[0]])

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
                now = self.backend.call([j for g in done for j in self._members(g)], "incarnation")
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
                self.schedule.pop((g, stage), None)  # the failed attempt's timing events never happened
            if attempt < self.max_stage_attempts:
                known.update(self._begin(todo, start))
        raise StageFailedError(f"stage {stage} of group(s) {sorted(failed)} failed {self.max_stage_attempts} times "
                               "(a worker died every attempt); nothing was published")

    def _begin(self, groups: list[int], start: Mapping[int, dict]) -> dict[int, str]:
        """Load ``start`` into the groups' trainers; returns the incarnations it was loaded into (read
        first: a worker that restarts after this shows a different one at the end of the stage)."""
        self.flush(groups)
        known = self.backend.call([j for g in groups for j in self._members(g)], "incarnation")
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
        imposed = self._imposed(groups, stage, t) if self.replay_schedule else {}
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
            attacks = self.backend.attack(attackers, honest, t) if attackers and honest else None
            vectors = dict((j, sent.vectors[j]) for j in group_trainers)
            if attacks is not None:
                self._log(t, attacks.failures)
                if any(r == DIED for r in attacks.failures.values()):
                    failed.add(g)
                    continue
                vectors.update(attacks.vectors)
            # Fixed order (by worker index): float sums must see rows in the same order on every backend.
            ordered = [vectors[j] for j in sorted(vectors)]
            if not ordered:
                continue
            if cfg.protocol == "monna":
                followers = [j for j in plan.honest(g) if sent.failures.get(j) == NO_DATA] if honest else []
                for j in group_trainers + followers:
                    self.incoming[j] = ("mix", ordered)
            else:
                self._server_update(g, ordered, t)
        return failed

    def _imposed(self, groups: Sequence[int], stage: int, t: int) -> dict[int, str]:
        out: dict[int, str] = {}
        for g in groups:
            out.update(self.schedule.get((g, stage), {}).get(t, {}))
        return out

    def _record_timing(self, stage: int, t: int, failures: dict[int, str]) -> None:
        for j, reason in failures.items():
            if reason in TIMING_EVENTS:
                g = self.plan.specs[j].group
                self.schedule.setdefault((g, stage), {}).setdefault(t, {})[j] = reason

    def _server_update(self, group: int, handles: list, t: int) -> None:
        cfg = self.plan.config.training
        stacked = torch.from_numpy(np.stack(self.backend.fetch(handles)))
        f = tolerated_f(cfg.rule, cfg.pre, stacked.shape[0], cfg.f)  # absent workers shrink the round
        pre = seeded_pre(cfg.pre, self.plan.config.seed, "pre", "server", group, t)
        update = aggregate(stacked, cfg.rule, f=f, pre=pre, **dict(cfg.rule_params))
        spec = self.plan.specs[self.plan.group_workers(group)[0]]
        lr = learning_rate(spec, t) if self.server_lr is None else self.server_lr
        theta = self.server_theta[group] - lr * update
        self.server_theta[group] = theta
        handle = self.backend.put(theta.numpy())
        for j in self.plan.trainers(group):
            self.incoming[j] = ("set", handle)

    def flush(self, groups: Sequence[int]) -> None:
        """Deliver pending messages so every worker's parameters are the round's final ones."""
        pending = {j: ("receive", self.incoming.pop(j)) for g in groups for j in self.plan.trainers(g)
                   if self.incoming.get(j) is not None}
        if pending:
            self.backend.call_each(pending)

    def _log(self, t: int, failures: dict[int, str]) -> None:
        for j, reason in sorted(failures.items()):
            if reason == NO_DATA:
                continue  # not a failure: the worker follows its group
            self.failures.append(Failure(t, j, reason))
            level = logging.DEBUG if self.plan.specs[j].is_byzantine and reason != DIED else logging.WARNING
            log.log(level, "round %d: worker %d absent (%s)", t, j, reason)

    # ----- reading models --------------------------------------------------------------------------
    def states(self, groups: Sequence[int]) -> dict[int, dict]:
        """The whole state of every stateful worker of ``groups`` (after ``flush``): trainers, and attackers
        that keep state across rounds."""
        return self.backend.call([j for g in groups for j in self.plan.stateful(g)], "get_state")

    def load_states(self, states: dict[int, dict]) -> None:
        self.backend.call_each({j: ("set_state", s) for j, s in states.items()})
        for j in states:
            self.incoming.pop(j, None)
        if self.plan.config.training.protocol == "server":
            for g in {self.plan.specs[j].group for j in states}:
                first = self.plan.honest(g)[0]
                self.server_theta[g] = torch.from_numpy(np.array(states[first]["theta"], dtype=np.float32))

    def honest_parameters(self, groups: Sequence[int]) -> dict[int, np.ndarray]:
        return self.backend.call([j for g in groups for j in self.plan.honest(g)], "parameters")

    def take_failures(self) -> list[dict]:
        out, self.failures = [f.to_dict() for f in self.failures], []
        return out


def elapsed(since: float) -> float:
    return round(time.perf_counter() - since, 3)
