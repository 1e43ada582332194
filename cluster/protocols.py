"""The training protocols, written once against the backend interface.

``monna``: decentralised. Every worker that trains sends its half-step model
to the others of its group and mixes what it received around its own vector
with the configured rule (``nna``: MoNNA). ``server``: a parameter server
aggregates the workers' momenta with any rule (+ pre-aggregation) and sends
the new parameters back; ``rule = "mean"`` is plain D-SGD.

Byzantine workers that run an attack see the honest vectors of the round
first (omniscient attacker). A worker that crashed, died or missed the round
deadline is simply absent from that round. Groups (SISA shards) never
exchange vectors; they advance in lockstep to share the backend's latency.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ostracon.aggregator import aggregate
from ostracon.nodes.worker import initial_parameters, learning_rate, seeded_pre, tolerated_f

from .backends import Backend
from .plan import RunPlan, stage_rounds, stage_start

log = logging.getLogger(__name__)


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
    incoming: dict[int, Any] = field(default_factory=dict)
    server_theta: dict[int, torch.Tensor] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    gradient_evaluations: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.plan.config.training.protocol == "server":
            for g in self.plan.groups:
                self.server_theta[g] = initial_parameters(self.plan.specs[self.plan.group_workers(g)[0]])

    # ----- stages ----------------------------------------------------------------------------------
    def run_stage(self, groups: Sequence[int], stage: int,
                  on_round: Callable[[int], None] | None = None) -> None:
        """All rounds of ``stage`` for ``groups``, then deliver the last messages (models are final)."""
        first = stage_start(self.plan.config, stage)
        for step in range(stage_rounds(self.plan.config)[stage]):
            self.run_round(groups, stage, step, first + step)
            if on_round is not None:
                on_round(first + step)
        self.flush(groups)

    def run_round(self, groups: Sequence[int], stage: int, step: int, t: int) -> None:
        plan, cfg = self.plan, self.plan.config.training
        trainers = [j for g in groups for j in plan.trainers(g)]
        sent = self.backend.step(trainers, stage, step, t,
                                 {j: self.incoming.get(j) for j in trainers}, cfg.round_deadline_s or None)
        self.incoming = {j: m for j, m in self.incoming.items() if j not in trainers}
        self._record(t, sent.failures)
        for g in groups:
            group_trainers = [j for j in plan.trainers(g) if j in sent.vectors]
            self.gradient_evaluations[g] = (
                self.gradient_evaluations.get(g, 0) + cfg.batch_size * len(group_trainers)
            )
            honest = [sent.vectors[j] for j in plan.honest(g) if j in sent.vectors]
            attackers = plan.attackers(g)
            attacks = self.backend.attack(attackers, honest, t) if attackers and honest else None
            vectors = dict((j, sent.vectors[j]) for j in group_trainers)
            if attacks is not None:
                self._record(t, attacks.failures)
                vectors.update(attacks.vectors)
            # Fixed order (by worker index): float sums must see rows in the same order on every backend.
            ordered = [vectors[j] for j in sorted(vectors)]
            if not ordered:
                continue
            if cfg.protocol == "monna":
                for j in group_trainers:
                    self.incoming[j] = ("mix", ordered)
            else:
                self._server_update(g, ordered, t)

    def _server_update(self, group: int, handles: list, t: int) -> None:
        cfg = self.plan.config.training
        stacked = torch.from_numpy(np.stack(self.backend.fetch(handles)))
        f = tolerated_f(cfg.rule, cfg.pre, stacked.shape[0], cfg.f)  # absent workers shrink the round
        pre = seeded_pre(cfg.pre, self.plan.config.seed, "pre", "server", group, t)
        update = aggregate(stacked, cfg.rule, f=f, pre=pre, **dict(cfg.rule_params))
        spec = self.plan.specs[self.plan.group_workers(group)[0]]
        theta = self.server_theta[group] - learning_rate(spec, t) * update
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
        self.resync(groups)

    def resync(self, groups: Sequence[int]) -> None:
        """A worker that Ray restarted rejoins from the current state of a healthy peer of its group."""
        restarted = self.backend.restarted()
        for j in sorted(restarted):
            g = self.plan.specs[j].group
            if g not in groups:
                continue
            peers = [p for p in self.plan.honest(g) if p not in restarted and p != j]
            if not peers:
                log.error("worker %d restarted and no healthy peer is left in group %d", j, g)
                continue
            state = self.backend.call([peers[0]], "get_state")[peers[0]]
            try:
                self.backend.call([j], "set_state", state)
            except Exception as exc:  # noqa: BLE001 - a worker that cannot come back stays absent
                log.error("worker %d could not rejoin: %s", j, exc)
                self.failures.append(Failure(-1, j, f"could not rejoin: {type(exc).__name__}"))
                continue
            self.incoming.pop(j, None)
            self.failures.append(Failure(-1, j, f"restarted; state copied from worker {peers[0]}"))
            log.warning("worker %d restarted; rejoined from worker %d", j, peers[0])

    def _record(self, t: int, failures: dict[int, str]) -> None:
        for j, reason in sorted(failures.items()):
            self.failures.append(Failure(t, j, reason))
            level = logging.DEBUG if self.plan.specs[j].is_byzantine else logging.WARNING
            log.log(level, "round %d: worker %d absent (%s)", t, j, reason)
        if failures:
            self.resync(self.plan.groups)

    # ----- reading models --------------------------------------------------------------------------
    def states(self, groups: Sequence[int]) -> dict[int, dict]:
        """Parameters and momentum of every training worker of ``groups`` (after ``flush``)."""
        return self.backend.call([j for g in groups for j in self.plan.trainers(g)], "get_state")

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
