"""Training protocols: what a group does with the vectors of a round (docs/design.md, "Seams").

One interface, :class:`TrainingProtocol`, two implementations, one registry (``PROTOCOLS``, keyed by
``training.protocol``):

- ``monna`` (:class:`MoNNA`): decentralised. Every worker that trains sends its half-step model to
  the others of its group and mixes what it received around its own with the configured rule
  (``nna``: MoNNA, Farhadkhani et al., ICML 2023). The driver only forwards handles.
- ``server`` (:class:`ParameterServer`): a parameter server aggregates the workers' momenta with any
  rule (+ pre-aggregation) and sends the new parameters back; ``rule = "mean"`` is plain D-SGD.

A protocol turns a round's ordered vector handles into the messages the workers apply at the start
of the next round; it owns any server-side state (the server's parameters), which a checkpoint
restore resets through :meth:`TrainingProtocol.restore`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from ostracon.aggregator import aggregate
from ostracon.nodes.messages import Assign, Message, Mix
from ostracon.nodes.worker import initial_parameters, learning_rate, seeded_pre, tolerated_f

from ..config.schema import PROTOCOLS as PROTOCOL_NAMES
from .backend import Backend
from .plan import RunPlan


class TrainingProtocol(Protocol):
    """What a group does with the vectors of a round."""

    def combine(self, group: int, ordered: Sequence[Any], t: int, receivers: Sequence[int],
                budget: int) -> dict[int, Message]:
        """The messages ``receivers`` apply next, from the round's vector handles ``ordered`` (by worker
        index); ``budget`` is the round's fault budget (the declared ``f`` less the silent workers)."""

    def restore(self, group: int, states: Mapping[int, Mapping[str, np.ndarray]]) -> None:
        """The group's workers were loaded with ``states`` (a checkpoint): reset any protocol state to match."""


class MoNNA:
    """Every receiver mixes the round's half-models around its own (the rule runs on the workers)."""

    def __init__(self, plan: RunPlan, backend: Backend, server_lr: float | None = None):
        self.plan = plan

    def combine(self, group: int, ordered: Sequence[Any], t: int, receivers: Sequence[int],
                budget: int) -> dict[int, Message]:
        message = Mix(list(ordered), budget)
        return dict.fromkeys(receivers, message)

    def restore(self, group: int, states: Mapping[int, Mapping[str, np.ndarray]]) -> None:
        return None  # no state outside the workers


class ParameterServer:
    """A server per group: ``theta <- theta - lr * rule(momenta)``, sent back to every trainer.

    ``server_lr`` fixes the step (approximate unlearning runs with the method's learning rate)."""

    def __init__(self, plan: RunPlan, backend: Backend, server_lr: float | None = None):
        self.plan, self.backend, self.server_lr = plan, backend, server_lr
        self.theta = {g: initial_parameters(plan.specs[plan.group_workers(g)[0]]) for g in plan.groups}

    def combine(self, group: int, ordered: Sequence[Any], t: int, receivers: Sequence[int],
                budget: int) -> dict[int, Message]:
        cfg = self.plan.config.training
        stacked = torch.from_numpy(np.stack(self.backend.fetch(ordered)))
        f = tolerated_f(cfg.rule, cfg.pre, stacked.shape[0], budget)  # absent workers shrink the round
        pre = seeded_pre(cfg.pre, self.plan.config.seed, "pre", "server", group, t)
        update = aggregate(stacked, cfg.rule, f=f, pre=pre, **dict(cfg.rule_params))
        spec = self.plan.specs[self.plan.group_workers(group)[0]]
        lr = learning_rate(spec, t) if self.server_lr is None else self.server_lr
        self.theta[group] = self.theta[group] - lr * update
        message = Assign(self.backend.put(self.theta[group].numpy()))
        return dict.fromkeys(self.plan.trainers(group), message)

    def restore(self, group: int, states: Mapping[int, Mapping[str, np.ndarray]]) -> None:
        first = self.plan.honest(group)[0]
        if first in states:
            self.theta[group] = torch.from_numpy(np.array(states[first]["theta"], dtype=np.float32))


ProtocolFactory = Callable[[RunPlan, Backend, "float | None"], TrainingProtocol]

PROTOCOLS: dict[str, ProtocolFactory] = {"monna": MoNNA, "server": ParameterServer}
assert tuple(PROTOCOLS) == PROTOCOL_NAMES, "the registry and the config's choices must agree"


def make_protocol(plan: RunPlan, backend: Backend, server_lr: float | None = None) -> TrainingProtocol:
    """The protocol named by ``training.protocol``."""
    return PROTOCOLS[plan.config.training.protocol](plan, backend, server_lr)
