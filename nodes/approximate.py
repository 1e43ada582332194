"""Approximate unlearning methods: what one worker computes for them.

Seven methods, registered by name like the aggregation rules. Each is a function with one signature,

    method(logits, labels, context, params) -> forget-set loss (a scalar tensor) or None

the objective on the rows to forget whose gradient (at the model of the worker that holds the rows)
is the method's *forget term*; ``None``: the method has no forget term (FT, l1-sparse). Its
hyperparameters are a frozen dataclass (``METHODS[name].params``) whose defaults are documented,
validated before anything changes, and overridable as config keys ``unlearning.<method>.<param>``.

How a group unlearns (``ostracon.cluster.unlearning.approximate`` drives it), ``steps`` rounds of::

    F      = sum_h n_h * grad forget_loss(theta_h; forget rows of h) / sum_h n_h   # at the holders h
    r_j    = retain_weight * grad CE(theta_j; retained batch of j)
    d_j    = r_j + F * min(1, |r_j| / |F|) + penalty_j(t)   # (F unclipped when there is no r_j: GA)
    m_j    = momentum * m_j + d_j                  # a fresh optimiser: m_j starts at 0
    half_j = theta_j - lr * m_j                    # sent; mixed with the group's robust rule
    theta_j = rule(received half-models, pivot=half_j, f)

The forget term is computed where the forget rows are (they never leave their worker) and applied by
every trainer of the group, so the honest models move together and a lone holder's update is not
filtered out by nearest-neighbour averaging as an outlier; the retained data stays where it is; the
mix keeps a Byzantine worker from hijacking the update. The forget term is clipped to the norm of each
trainer's own retained-data step: whoever computed it (a Byzantine worker may hold forget rows too),
it moves an honest model no further per round than one honest step, and a one-sample forget set
(whose random-label or ascent gradient is huge) cannot blow the model up. SalUn restricts every change (step, momentum,
mix) to its saliency mask; SSD is one-shot (no rounds): it dampens parameters by importance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from .approximate_params import FTParams, GAParams, L1SparseParams, NPOParams, RLParams, SalUnParams, SSDParams


@dataclass(frozen=True)
class Method:
    name: str
    loss: Callable[..., torch.Tensor | None]
    params: type
    one_shot: bool = False  # SSD: importance and dampening, no rounds
    masked: bool = False  # SalUn: every change restricted to a saliency mask
    random_labels: bool = False  # RL, SalUn: the forget rows get random wrong labels each round
    reference: bool = False  # NPO: needs the pre-unlearning model's log-probabilities

    def make(self, values: Mapping[str, Any] | None = None, where: str | None = None) -> Any:
        """Validated params from ``values`` (unknown names are errors naming them): an instance of
        ``self.params``, one of the dataclasses of ``approximate_params`` (they share no base class)."""
        where = where or f"unlearning.{self.name}"
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(self.params)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(where + '.' + k for k in unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        params = self.params(**values)
        params.validate(where)
        return params


METHODS: dict[str, Method] = {}

LossT = TypeVar("LossT", bound=Callable[..., torch.Tensor | None])


def register_method(name: str, params: type, **flags: bool) -> Callable[[LossT], LossT]:
    """Register ``fn(logits, labels, context, params) -> loss | None`` as approximate method ``name``."""
    def decorator(fn: LossT) -> LossT:
        if name in METHODS:
            raise ValueError(f"unlearning method {name!r} is already registered")
        METHODS[name] = Method(name, fn, params, **flags)
        return fn
    return decorator


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown unlearning method {name!r}; known: {', '.join(sorted(METHODS))}") from None


@register_method("ft", FTParams)
def ft(
    logits: torch.Tensor, labels: torch.Tensor, context: Mapping[str, Any], params: FTParams
) -> None:
    """Fine-tuning (FT): descend the cross-entropy on the retained data only; the model forgets by
    catastrophic forgetting. Warnecke et al., "Machine Unlearning of Features and Labels" (NDSS 2023);
    the FT baseline of SalUn (Fan et al., ICLR 2024). No forget term. Defaults: steps 15, lr 0.05,
    momentum 0.9, batch 32."""
    return None


@register_method("ga", GAParams)
def ga(
    logits: torch.Tensor, labels: torch.Tensor, context: Mapping[str, Any], params: GAParams
) -> torch.Tensor:
    """Gradient ascent (GA): ascend the cross-entropy on the forget rows,
    loss_F = -CE(f_theta(x_f), y_f). Thudi et al., "Unrolling SGD" (EuroS&P 2022); Graves et al.,
    "Amnesiac Machine Learning" (AAAI 2021). Defaults: steps 5, lr 0.01, retain_weight 0 (pure GA)."""
    return -F.cross_entropy(logits, labels)


@register_method("npo", NPOParams, reference=True)
def npo(
    logits: torch.Tensor, labels: torch.Tensor, context: Mapping[str, Any], params: NPOParams
) -> torch.Tensor:
    """Negative preference optimisation (NPO): with pi(y|x) the true-class probability and pi_ref the
    model before unlearning,  loss_F = (2 / beta) * mean log(1 + (pi_theta / pi_ref)^beta)
    = -(2 / beta) * mean log sigmoid(-beta * (log pi_theta - log pi_ref)). Zhang et al., "Negative
    Preference Optimization" (COLM 2024); with the retained-data term it is NPO+RT. Defaults: beta 0.5,
    steps 10, lr 0.05, retain_weight 1."""
    logp = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    ratio = logp - context["reference_logp"]
    return -(2.0 / params.beta) * F.logsigmoid(-params.beta * ratio).mean()


@register_method("rl", RLParams, random_labels=True)
def rl(
    logits: torch.Tensor, labels: torch.Tensor, context: Mapping[str, Any], params: RLParams
) -> torch.Tensor:
    """Random labels (RL): descend the cross-entropy of the forget rows against random wrong labels
    (redrawn each round), plus fine-tuning on the retained data:
    loss_F = forget_weight * CE(f_theta(x_f), y_rand), y_rand != y_f. Golatkar et al., "Eternal
    Sunshine of the Spotless Net" (CVPR 2020); the RL baseline of SalUn. Defaults: steps 10, lr 0.05."""
    return params.forget_weight * F.cross_entropy(logits, context["random_labels"])


@register_method("l1_sparse", L1SparseParams)
def l1_sparse(
    logits: torch.Tensor, labels: torch.Tensor, context: Mapping[str, Any], params: L1SparseParams
) -> None:
    """l1-sparse: fine-tuning on the retained data with a linearly decaying L1 penalty,
    d += gamma_t * sign(theta), gamma_t = gamma * (1 - t / steps). Jia et al., "Model Sparsity Can
    Simplify Machine Unlearning" (NeurIPS 2023). No forget term. Defaults: gamma 5e-4, steps 15."""
    return None


@register_method("salun", SalUnParams, masked=True, random_labels=True)
def salun(
    logits: torch.Tensor, labels: torch.Tensor, context: Mapping[str, Any], params: SalUnParams
) -> torch.Tensor:
    """SalUn: saliency mask m = 1[|grad CE(theta_0; forget rows)| among the top `sparsity` fraction],
    then random labelling on the masked weights only: theta <- theta - lr * m * (grad RL loss); momentum
    and mixing are masked too, so the other weights are bit-identical before and after. Fan et al.,
    "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency" (ICLR 2024). The loss is
    RL's. Defaults: sparsity 0.5, steps 10, lr 0.05."""
    return params.forget_weight * F.cross_entropy(logits, context["random_labels"])


@register_method("ssd", SSDParams, one_shot=True)
def ssd(
    logits: torch.Tensor, labels: torch.Tensor, context: Mapping[str, Any], params: SSDParams
) -> torch.Tensor:
    """Selective synaptic dampening (SSD): importances I = E[(grad CE)^2] (diagonal Fisher, over
    batches) on the forget rows (I_F, at their holders) and on retained data (I_R, each trainer's own,
    coordinate median over the group's trainers); every parameter with I_F > alpha * I_R is scaled by
    min(lam * I_R / I_F, 1). Foster et al., "Fast Machine Unlearning Without Retraining Through
    Selective Synaptic Dampening" (AAAI 2024). One-shot, no training. Defaults: alpha 10, lam 1.
    The loss returned is the one whose squared gradient is the importance."""
    return F.cross_entropy(logits, labels)


def random_wrong_labels(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A label != y for every row, uniform over the other classes."""
    shift = torch.randint(1, num_classes, labels.shape, generator=generator).to(labels.device)
    return (labels + shift) % num_classes


def dampen(
    theta: torch.Tensor, i_forget: torch.Tensor, i_retain: torch.Tensor, alpha: float, lam: float
) -> torch.Tensor:
    """SSD's dampening: theta_i * min(lam * I_R,i / I_F,i, 1) where I_F,i > alpha * I_R,i, else theta_i."""
    selected = i_forget > alpha * i_retain
    factor = torch.clamp(lam * i_retain / torch.where(selected, i_forget, torch.ones_like(i_forget)), max=1.0)
    return torch.where(selected, theta * factor, theta)


def saliency_mask(saliency: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The ``sparsity`` fraction of coordinates with the largest ``|saliency|`` (ties: lower index first)."""
    k = max(1, int(round(sparsity * saliency.numel())))
    order = torch.sort(saliency.abs(), descending=True, stable=True).indices
    mask = torch.zeros(saliency.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask
