"""Byzantine attacks on exchanged vectors (gradients or half-models).

Every attack has one signature::

    attack(honest, *, f=0, num_byzantine=1, defense=None, generator=None, **params) -> (d,)

``honest`` is the ``(h, d)`` stack of the honest vectors of this round (the
attacker is omniscient); the result is the one vector every Byzantine worker
sends (random attacks are called once per worker, each with its own
generator). ``defense(vectors (n, d)) -> (d,)`` is the aggregation in use,
built by the caller, e.g. ``lambda v: aggregate(v, "cwtm", f=3)``; only the
optimised attacks need it. Attacks never modify ``honest``, return its dtype and
device, and refuse unknown or bad parameters with ``ValueError``.

This module imports only :mod:`ostracon.aggregator.registry` and
:mod:`ostracon.aggregator.validation`, never the rules, so ``aggregator/__init__`` can
import it in any order.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from .registry import register_attack
from .validation import check_vectors

Defense = Callable[[torch.Tensor], torch.Tensor]

# Golden ratio conjugate, (sqrt(5) - 1) / 2, for the golden-section refinement.
_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0


# --------------------------------------------------------------------------- checks


def _reject_unknown(attack: str, params: Mapping[str, object]) -> None:
    if params:
        names = ", ".join(sorted(params))
        raise ValueError(f"{attack}: unknown parameter(s): {names}")


def _check_common(attack: str, honest: torch.Tensor, f: int, num_byzantine: int) -> torch.Tensor:
    """Validate the arguments every attack shares; return ``honest``."""
    check_vectors(honest, "honest")
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"{attack}: f must be an int >= 0, got {f!r}")
    if isinstance(num_byzantine, bool) or not isinstance(num_byzantine, int) or num_byzantine < 1:
        raise ValueError(f"{attack}: num_byzantine must be an int >= 1, got {num_byzantine!r}")
    return honest


def _check_real(attack: str, name: str, value: object, *, minimum: float | None = None) -> float:
    """Require a finite real number (not a bool), optionally ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{attack}: {name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{attack}: {name} must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{attack}: {name} must be >= {minimum}, got {value!r}")
    return value


def _check_int(attack: str, name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{attack}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_defense(attack: str, defense: Defense | None) -> Defense:
    if defense is None:
        raise ValueError(f"{attack}: a defense callable (vectors (n, d) -> (d,)) is required")
    if not callable(defense):
        raise ValueError(f"{attack}: defense must be callable, got {type(defense).__name__}")
    return defense


# --------------------------------------------------------------------------- statistics


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half precisions lose too much in a mean over many rows; accumulate in float32.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _mean(honest: torch.Tensor) -> torch.Tensor:
    return honest.to(_stats_dtype(honest.dtype)).mean(dim=0)


def _std(honest: torch.Tensor) -> torch.Tensor:
    # Population std (divide by h): defined for h = 1, and the convention of ByzFL.
    return honest.to(_stats_dtype(honest.dtype)).std(dim=0, correction=0)


def alie_z_max(n: int, f: int) -> float:
    """Baruch et al.'s default ALIE factor for ``n`` workers of which ``f`` are Byzantine.

    ``s = floor(n/2 + 1) - f`` (honest "supporters" the attacker needs for a
    majority) and ``z_max = Phi^{-1}((n - s) / n)``, ``Phi`` the standard normal
    CDF. Source: Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing
    Defenses For Distributed Learning", NeurIPS 2019, Algorithm 3.
    Raises ``ValueError`` when ``(n - s) / n`` is not in ``(0, 1)`` (z_max infinite).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"alie: n must be an int >= 1, got {n!r}")
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"alie: f must be an int >= 0, got {f!r}")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0.0 < p < 1.0:
        raise ValueError(
            f"alie: z_max is infinite for n={n}, f={f} (s={s}, (n - s)/n={p}); pass tau explicitly"
        )
    # ndtri is Phi^{-1}; float64 so the factor does not depend on the vectors' dtype.
    return float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))


# --------------------------------------------------------------------------- attacks


@register_attack("sign_flip")
@torch.no_grad()
def sign_flip(
    honest: torch.Tensor,
    *,
    f: int = 0,
    num_byzantine: int = 1,
    defense: Defense | None = None,
    generator: torch.Generator | None = None,
    **params: Any,
) -> torch.Tensor:
    """``-mean(honest)``.

    Source: Allen-Zhu, Ebrahimian, Li, Alistarh, "Byzantine-Resilient Non-Convex
    Stochastic Gradient Descent", ICLR 2021 (arXiv 2020).
    """
    _reject_unknown("sign_flip", params)
    _check_common("sign_flip", honest, f, num_byzantine)
    return (-_mean(honest)).to(honest.dtype)


def _alie_vector(
    honest: torch.Tensor, tau: float, mu: torch.Tensor | None = None, sd: torch.Tensor | None = None
) -> torch.Tensor:
    # mu/sd may be passed in precomputed: a line search evaluates many factors on the same rows.
    mu = _mean(honest) if mu is None else mu
    sd = _std(honest) if sd is None else sd
    return (mu - tau * sd).to(honest.dtype)


@register_attack("alie")
@torch.no_grad()
def alie(
    honest: torch.Tensor,
    *,
    f: int = 0,
    num_byzantine: int = 1,
    defense: Defense | None = None,
    generator: torch.Generator | None = None,
    tau: float | None = None,
    **params: Any,
) -> torch.Tensor:
    """A Little Is Enough: ``mean(honest) - tau * std(honest)``, coordinate-wise.

    ``std`` is the population standard deviation (divides by ``h``).
    ``tau=None`` uses the paper's ``z_max`` (:func:`alie_z_max`) with
    ``n = h + num_byzantine`` and ``f``. Source: Baruch et al., NeurIPS 2019.
    """
    _reject_unknown("alie", params)
    _check_common("alie", honest, f, num_byzantine)
    if tau is None:
        tau = alie_z_max(honest.shape[0] + num_byzantine, f)
    tau = _check_real("alie", "tau", tau)
    return _alie_vector(honest, tau)


def _foe_vector(honest: torch.Tensor, eps: float, mu: torch.Tensor | None = None) -> torch.Tensor:
    return (-eps * (_mean(honest) if mu is None else mu)).to(honest.dtype)


@register_attack("foe")
@torch.no_grad()
def foe(
    honest: torch.Tensor,
    *,
    f: int = 0,
    num_byzantine: int = 1,
    defense: Defense | None = None,
    generator: torch.Generator | None = None,
    eps: float = 0.1,
    **params: Any,
) -> torch.Tensor:
    """Fall of Empires / inner-product manipulation: ``-eps * mean(honest)``, ``eps >= 0``.

    This is the vector each Byzantine worker sends (ByzFL's "IPM" convention),
    not the resulting aggregate. Small ``eps`` (0.1) makes the inner product of
    the aggregate with the true mean small; large ``eps`` (100) makes it negative.
    Source: Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD
    by Inner Product Manipulation", UAI 2019.
    """
    _reject_unknown("foe", params)
    _check_common("foe", honest, f, num_byzantine)
    eps = _check_real("foe", "eps", eps, minimum=0.0)
    return _foe_vector(honest, eps)


@register_attack("mimic")
@torch.no_grad()
def mimic(
    honest: torch.Tensor,
    *,
    f: int = 0,
    num_byzantine: int = 1,
    defense: Defense | None = None,
    generator: torch.Generator | None = None,
    target: int = 0,
    **params: Any,
) -> torch.Tensor:
    """A copy of honest vector ``honest[target]`` (``0 <= target < h``).

    Source: Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous
    Datasets via Bucketing", ICLR 2022.
    """
    _reject_unknown("mimic", params)
    _check_common("mimic", honest, f, num_byzantine)
    h = honest.shape[0]
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < h:
        raise ValueError(f"mimic: target must be an int in [0, {h}), got {target!r}")
    # Clone so the caller can never alias (and later mutate) an honest row.
    return honest[target].clone()


def mimic_direction(honest: torch.Tensor, direction: torch.Tensor, rounds_seen: int) -> torch.Tensor:
    """One step of mimic's online power iteration for the top eigenvector of the honest spread.

    With ``c_i = x_i - mean(honest)``, ``u = sum_i <c_i, z> c_i`` and ``k = rounds_seen``::

        z' = normalise( k/(k+1) z + 1/(k+1) u / |u| )

    (``k = 0``: ``z' = u / |u|``). Karimireddy, He, Jaggi, "Byzantine-Robust
    Learning on Heterogeneous Datasets via Bucketing", ICLR 2022, Appendix
    (mimic's warm-up). The paper centres on a running mean of the gradients
    over the warm-up; the vectors here may be parameters, which move from round
    to round, so the spread is taken around each round's own mean. A zero
    spread leaves ``z`` unchanged. Pure: returns a new ``(d,)`` tensor.
    """
    dt = _stats_dtype(honest.dtype)
    centred = honest.to(dt) - _mean(honest)
    z = direction.to(device=honest.device, dtype=dt)
    u = centred.T @ (centred @ z)
    norm: torch.Tensor = torch.linalg.vector_norm(u)  # torch.linalg is untyped (Any)
    if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
        return z.clone()
    u = u / norm
    z = u if rounds_seen <= 0 else (rounds_seen * z + u) / (rounds_seen + 1)
    length: torch.Tensor = torch.linalg.vector_norm(z)
    return z / length


def mimic_target(honest: torch.Tensor, direction: torch.Tensor) -> int:
    """``argmax_i <x_i - mean(honest), z>``: the honest worker farthest along the top direction (ties: lowest i)."""
    dt = _stats_dtype(honest.dtype)
    scores = (honest.to(dt) - _mean(honest)) @ direction.to(device=honest.device, dtype=dt)
    return int(torch.argmax(torch.nan_to_num(scores, nan=-math.inf)))


@register_attack("mimic_variant")
@torch.no_grad()
def mimic_variant(
    honest: torch.Tensor,
    *,
    f: int = 0,
    num_byzantine: int = 1,
    defense: Defense | None = None,
    generator: torch.Generator | None = None,
    direction: torch.Tensor | None = None,
    target: int | None = None,
    warmup: int = 20,
    **params: Any,
) -> torch.Tensor:
    """Mimic as in the bucketing paper: copy the honest worker farthest along the top direction.

    Returns ``honest[target]`` when ``target`` is given (after the warm-up the
    target is fixed), else ``honest[mimic_target(honest, direction)]``. The
    warm-up state (``direction``, from :func:`mimic_direction`, and the frozen
    target) is kept by the Byzantine worker across rounds, for ``warmup``
    rounds (checked here, counted by the worker). Without a direction, one
    power step from the all-ones direction on this round's vectors. Source:
    Karimireddy, He, Jaggi, ICLR 2022 (the "mimic" attack with its eigenvector warm-up).
    """
    _reject_unknown("mimic_variant", params)
    _check_common("mimic_variant", honest, f, num_byzantine)
    _check_int("mimic_variant", "warmup", warmup, minimum=0)
    h = honest.shape[0]
    if target is None:
        if direction is None:
            direction = mimic_direction(honest, torch.ones(honest.shape[1], dtype=honest.dtype), 0)
        if not isinstance(direction, torch.Tensor) or tuple(direction.shape) != (honest.shape[1],):
            raise ValueError(f"mimic_variant: direction must be a ({honest.shape[1]},) tensor")
        target = mimic_target(honest, direction)
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < h:
        raise ValueError(f"mimic_variant: target must be an int in [0, {h}), got {target!r}")
    return honest[target].clone()


@register_attack("gaussian")
@torch.no_grad()
def gaussian(
    honest: torch.Tensor,
    *,
    f: int = 0,
    num_byzantine: int = 1,
    defense: Defense | None = None,
    generator: torch.Generator | None = None,
    mu: float = 0.0,
    sigma: float = 200.0,
    **params: Any,
) -> torch.Tensor:
    """A draw of ``N(mu, sigma^2 I_d)``; ignores the honest values (uses only ``d``).

    Deterministic given ``generator``; the draw happens on the generator's
    device (in float32, or float64 for float64 inputs) and is then moved to
    ``honest``'s device and dtype, so one seed gives one vector everywhere.
    Source: the "Gaussian" Byzantine worker of Blanchard et al., NeurIPS 2017 / ByzFL.
    """
    _reject_unknown("gaussian", params)
    _check_common("gaussian", honest, f, num_byzantine)
    mu = _check_real("gaussian", "mu", mu)
    sigma = _check_real("gaussian", "sigma", sigma, minimum=0.0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"gaussian: generator must be a torch.Generator, got {type(generator).__name__}")
    draw_dtype = torch.float64 if honest.dtype == torch.float64 else torch.float32
    draw_device = generator.device if generator is not None else honest.device
    noise = torch.randn(honest.shape[1], generator=generator, dtype=draw_dtype, device=draw_device)
    return (noise * sigma + mu).to(device=honest.device, dtype=honest.dtype)


@register_attack("inf")
@torch.no_grad()
def inf(
    honest: torch.Tensor,
    *,
    f: int = 0,
    num_byzantine: int = 1,
    defense: Defense | None = None,
    generator: torch.Generator | None = None,
    **params: Any,
) -> torch.Tensor:
    """A vector of ``+inf`` (tests that rules survive non-finite input)."""
    _reject_unknown("inf", params)
    _check_common("inf", honest, f, num_byzantine)
    return torch.full((honest.shape[1],), math.inf, dtype=honest.dtype, device=honest.device)


@register_attack("nan")
@torch.no_grad()
def nan(
    honest: torch.Tensor,
    *,
    f: int = 0,
    num_byzantine: int = 1,
    defense: Defense | None = None,
    generator: torch.Generator | None = None,
    **params: Any,
) -> torch.Tensor:
    """A vector of ``NaN`` (tests that rules survive non-finite input)."""
    _reject_unknown("nan", params)
    _check_common("nan", honest, f, num_byzantine)
    return torch.full((honest.shape[1],), math.nan, dtype=honest.dtype, device=honest.device)


# --------------------------------------------------------------------------- optimised attacks


def attack_distance(honest: torch.Tensor, byzantine: torch.Tensor, defense: Defense, num_byzantine: int) -> float:
    """``|| defense(cat(honest, byzantine repeated num_byzantine times)) - mean(honest) ||_2``.

    NaN (an undefined outcome) is returned as ``-inf`` so a search never picks it.
    """
    d = honest.shape[1]
    vectors = torch.cat([honest, byzantine.reshape(1, d).expand(num_byzantine, d)])
    out = defense(vectors)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (d,):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"defense must return a tensor of shape ({d},), got {shape}")
    # float64 so the comparison between candidates does not depend on the input dtype.
    dist = torch.linalg.vector_norm(out.double() - _mean(honest).double()).item()
    return -math.inf if math.isnan(dist) else dist


# Default search grids: (low, high, steps, spacing). ALIE factors live on the
# scale of a few standard deviations; FOE factors span decades (0.1 to 100 in the paper).
_GRIDS = {
    "alie": (0.0, 10.0, 21, "linear"),
    "foe": (0.01, 100.0, 17, "geometric"),
}
_REFINE = 12


def _grid(attack: str, low: float, high: float, steps: int, spacing: str) -> list[float]:
    minimum = 0.0 if attack == "foe" else None
    low = _check_real(attack, "low", low, minimum=minimum)
    high = _check_real(attack, "high", high, minimum=minimum)
    steps = _check_int(attack, "steps", steps, minimum=1)
    if high < low:
        raise ValueError(f"{attack}: need low <= high, got low={low}, high={high}")
    if steps == 1:
        return [low]
    if spacing == "geometric":
        if low <= 0.0:
            raise ValueError(f"{attack}: the geometric grid needs low > 0, got low={low}")
        ratio = (high / low) ** (1.0 / (steps - 1))
        return [low * ratio**i for i in range(steps - 1)] + [high]
    return [low + (high - low) * i / (steps - 1) for i in range(steps - 1)] + [high]


def _line_search(
    evaluate: Callable[[float], float], candidates: Sequence[float], refine: int
) -> tuple[float, float]:
    """Maximise ``evaluate`` over ``candidates``, then golden-section refine around the best.

    Costs ``len(set(candidates)) + refine`` evaluations. Returns ``(factor, value)``:
    the best point ever evaluated (ties: the first evaluated), so the result is
    never worse than any candidate.
    """
    grid = sorted(set(candidates))
    values = [evaluate(x) for x in grid]
    best_i = max(range(len(grid)), key=lambda i: (values[i], -i))
    best_x, best_y = grid[best_i], values[best_i]
    if len(grid) < 2 or refine == 0:
        return best_x, best_y
    # Bracket: the best grid point's neighbours (the distance is often unimodal there).
    a, b = grid[max(best_i - 1, 0)], grid[min(best_i + 1, len(grid) - 1)]
    if refine == 1:  # one probe: the bracket's middle
        y = evaluate((a + b) / 2)
        return ((a + b) / 2, y) if y > best_y else (best_x, best_y)
    c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    yc, yd = evaluate(c), evaluate(d)
    evals = 2
    for x, y in ((c, yc), (d, yd)):
        if y > best_y:
            best_x, best_y = x, y
    while evals < refine:
        if yc >= yd:  # maximum lies in [a, d]
            b, d, yd = d, c, yc
            c = b - _INV_PHI * (b - a)
            yc = evaluate(c)
            x, y = c, yc
        else:  # maximum lies in [c, b]
            a, c, yc = c, d, yd
            d = a + _INV_PHI * (b - a)
            yd = evaluate(d)
            x, y = d, yd
        evals += 1
        if y > best_y:
            best_x, best_y = x, y
    return best_x, best_y


def _signed(name: str, candidates: list[float], sign: int) -> list[float]:
    """ALIE's candidates for search direction ``sign``: as given (-1) or negated (+1); 0 is two searches."""
    if isinstance(sign, bool) or sign not in (-1, 0, 1):
        raise ValueError(f"{name}: sign must be -1, 0 or +1, got {sign!r}")
    return candidates if sign == -1 else [-x for x in candidates]


def best_factor(
    attack: str,
    honest: torch.Tensor,
    *,
    f: int = 0,
    num_byzantine: int = 1,
    defense: Defense | None = None,
    factors: Iterable[float] | None = None,
    low: float | None = None,
    high: float | None = None,
    steps: int | None = None,
    refine: int = _REFINE,
    sign: int = -1,
) -> tuple[float, float]:
    """Best factor of ``attack`` (``"alie"``: tau, ``"foe"``: eps) against ``defense``.

    Maximises :func:`attack_distance` over the candidates -- ``factors`` if given,
    else ``steps`` points from ``low`` to ``high`` (ALIE: linear, default 0..10 in
    21 steps; FOE: geometric, default 0.01..100 in 17 steps) -- plus the attack's
    default factor (ALIE's z_max when finite, FOE's 0.1), then refines with
    ``refine`` golden-section evaluations between the best candidate's
    neighbours. Returns ``(factor, distance)``; deterministic for a
    deterministic defense. Source of the idea: ByzFL's optimal ALIE/IPM attacks.

    ALIE only: ``sign`` is the direction of the search, the sent vector being
    ``mean - tau * std``. ``-1`` (default, ByzFL's convention): ``tau`` from the
    candidates, ``>= 0`` for the default grid, so the vector sits *below* the
    mean in every coordinate; ``+1``: the candidates negated (``mean + |tau| std``);
    ``0``: one search per side (each refined), the better one wins.
    """
    name = f"{attack}_optimized"
    if attack == "alie" and sign == 0:  # each side searched (and refined) on its own; the better one wins
        sides = [best_factor(attack, honest, f=f, num_byzantine=num_byzantine, defense=defense, factors=factors,
                             low=low, high=high, steps=steps, refine=refine, sign=s) for s in (-1, 1)]
        return max(sides, key=lambda side: side[1])  # ties: the default side (-1), listed first
    if attack not in _GRIDS:
        raise ValueError(f"best_factor: attack must be 'alie' or 'foe', got {attack!r}")
    _check_common(name, honest, f, num_byzantine)
    defense = _check_defense(name, defense)
    refine = _check_int(name, "refine", refine, minimum=0)
    if factors is not None:
        if low is not None or high is not None or steps is not None:
            raise ValueError(f"{name}: give either factors or low/high/steps, not both")
        if isinstance(factors, (str, bytes)) or not isinstance(factors, Iterable):
            raise ValueError(f"{name}: factors must be a sequence of numbers, got {factors!r}")
        minimum = 0.0 if attack == "foe" else None
        candidates = [_check_real(name, "factors[]", x, minimum=minimum) for x in factors]
        if not candidates:
            raise ValueError(f"{name}: factors is empty")
    else:
        d_low, d_high, d_steps, spacing = _GRIDS[attack]
        candidates = _grid(
            name,
            d_low if low is None else low,
            d_high if high is None else high,
            d_steps if steps is None else steps,
            spacing,
        )
    if attack == "alie":
        with contextlib.suppress(ValueError):  # z_max infinite: no finite default to compare against
            candidates.append(alie_z_max(honest.shape[0] + num_byzantine, f))
        candidates = _signed(name, candidates, sign)
        mu, sd = _mean(honest), _std(honest)  # once per search, not once per candidate

        def make(h: torch.Tensor, x: float) -> torch.Tensor:
            return _alie_vector(h, x, mu, sd)
    else:
        if sign != -1:
            raise ValueError(f"{name}: sign is an ALIE parameter (FOE's eps is >= 0), got sign={sign!r}")
        candidates.append(0.1)
        mu = _mean(honest)

        def make(h: torch.Tensor, x: float) -> torch.Tensor:
            return _foe_vector(h, x, mu)
    with torch.no_grad():
        return _line_search(
            lambda x: attack_distance(honest, make(honest, x), defense, num_byzantine), candidates, refine
        )


@register_attack("alie_optimized")
@torch.no_grad()
def alie_optimized(
    honest: torch.Tensor,
    *,
    f: int = 0,
    num_byzantine: int = 1,
    defense: Defense | None = None,
    generator: torch.Generator | None = None,
    factors: Iterable[float] | None = None,
    low: float | None = None,
    high: float | None = None,
    steps: int | None = None,
    refine: int = _REFINE,
    sign: int = -1,
    **params: Any,
) -> torch.Tensor:
    """ALIE with the tau that maximises ``||defense(honest + byzantine) - mean(honest)||_2``.

    Search as in :func:`best_factor` (at most ~34 defense calls by default, ~68
    with ``sign = 0``); ``defense`` is required. ``sign = -1`` (default) searches
    ``mean - tau std``, ``tau >= 0``, as ByzFL; ``+1`` searches ``mean + tau std``;
    ``0`` searches both and keeps the better each round. Against rules that mix
    *parameters* (MoNNA) the one-sided search pulls every weight the same way
    every round, which is what breaks NNA. Sources: Baruch et al., NeurIPS 2019; ByzFL.
    """
    _reject_unknown("alie_optimized", params)
    tau, _ = best_factor(
        "alie", honest, f=f, num_byzantine=num_byzantine, defense=defense,
        factors=factors, low=low, high=high, steps=steps, refine=refine, sign=sign,
    )
    return _alie_vector(honest, tau)


@register_attack("foe_optimized")
@torch.no_grad()
def foe_optimized(
    honest: torch.Tensor,
    *,
    f: int = 0,
    num_byzantine: int = 1,
    defense: Defense | None = None,
    generator: torch.Generator | None = None,
    factors: Iterable[float] | None = None,
    low: float | None = None,
    high: float | None = None,
    steps: int | None = None,
    refine: int = _REFINE,
    **params: Any,
) -> torch.Tensor:
    """FOE with the eps >= 0 that maximises ``||defense(honest + byzantine) - mean(honest)||_2``.

    Search as in :func:`best_factor` (at most ~30 defense calls by default);
    ``defense`` is required. Sources: Xie et al., UAI 2019; ByzFL.
    """
    _reject_unknown("foe_optimized", params)
    eps, _ = best_factor(
        "foe", honest, f=f, num_byzantine=num_byzantine, defense=defense,
        factors=factors, low=low, high=high, steps=steps, refine=refine,
    )
    return _foe_vector(honest, eps)
