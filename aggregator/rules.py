"""Robust aggregation rules: a stacked ``(n, d)`` tensor in, one ``(d,)`` vector out.

Every rule has the signature::

    rule(vectors, *, f=0, pivot=None, **params) -> Tensor (d,)

and is registered by name (``get_rule("cwtm")``). ``f`` is the number of
Byzantine rows the caller declares; each rule states the ``n`` it needs and
refuses a larger ``f`` with ``ValueError``. Rules that do not use ``pivot``
accept it, check its shape, and ignore it. A rule never modifies its input,
returns the input's dtype and device, and is invariant to the order of the
rows (for a fixed pivot). Rules run under ``torch.no_grad()``: a selection is
not differentiable, and the work buffers are written in place.

Non-finite input (see :mod:`ostracon.aggregator.distances`): distance-based rules treat
a row holding a NaN/inf, or whose squared norm overflows, as infinitely far;
coordinate-wise rules order NaN as ``+inf`` per coordinate. With at most ``f``
such rows every rule except ``mean`` returns a finite vector. With more, the
declared ``f`` is wrong and the result may be non-finite.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from . import distances
from .registry import register_rule
from .validation import check_f, check_pivot, check_vectors

# --------------------------------------------------------------------------- checks


def reject_unknown(name: str, params: Mapping[str, object]) -> None:
    """Refuse parameters the rule does not define (a typo must not be ignored)."""
    if params:
        unknown = ", ".join(repr(k) for k in sorted(params))
        raise ValueError(f"{name}: unknown parameter(s) {unknown}")


def check_int(name: str, param: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: {param} must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name}: {param} must be {bound}, got {value}")
    return value


def check_real(name: str, param: str, value: object, *, minimum: float = 0.0, strict: bool = False) -> float:
    """Require a finite real ``> minimum`` (strict) or ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: {param} must be a finite real number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name}: {param} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


# largest f each requirement allows, as a function of n
_MAX_F: dict[str, Callable[[int], int]] = {
    "n > f": lambda n: n - 1,
    "n > 2f": lambda n: (n - 1) // 2,
    "n > 2f + 2": lambda n: (n - 3) // 2,
}


_REQUIREMENTS = {"mean": "n > f", "krum": "n > 2f + 2", "multikrum": "n > 2f + 2"}  # every other rule: n > 2f


def max_f(rule: str, n: int) -> int:
    """The largest ``f`` that ``rule`` accepts for ``n`` vectors (a round with absent workers is smaller)."""
    return max(0, _MAX_F[_REQUIREMENTS.get(rule.lower(), "n > 2f")](n))


def _start(
    name: str, vectors: torch.Tensor, f: int, pivot: torch.Tensor | None, requirement: str
) -> tuple[int, int]:
    """Shared checks: vectors, ``f`` against the rule's requirement, the pivot's shape if given."""
    check_vectors(vectors)
    n, d = vectors.shape
    check_f(f, n, max_f=_MAX_F[requirement](n), rule=name, requirement=requirement)
    if pivot is not None:
        _pivot(name, pivot, vectors)
    return n, d


def _pivot(name: str, pivot: torch.Tensor | None, vectors: torch.Tensor) -> torch.Tensor:
    pivot = check_pivot(pivot, vectors, name)
    if pivot.device != vectors.device:
        raise ValueError(f"{name}: pivot is on {pivot.device}, vectors on {vectors.device}")
    if not pivot.is_floating_point():
        raise ValueError(f"{name}: pivot must have a floating-point dtype, got {pivot.dtype}")
    # a finite sum proves every entry finite (one reduction); only an overflowing sum needs the full check
    if not bool(torch.isfinite(pivot.sum())) and not bool(torch.isfinite(pivot).all()):
        raise ValueError(f"{name}: pivot must be finite (it holds NaN or inf)")
    return pivot


def _uniform(n: int, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Weights ``1/len(rows)`` on ``rows``, 0 elsewhere."""
    w = torch.zeros(n, dtype=distances.small_dtype(device), device=device)
    return w.index_fill_(0, rows, 1.0 / rows.numel())


# --------------------------------------------------------------------------- sorting network
# Coordinate-wise rules need order statistics of every column. A column has only
# n values, so instead of torch.sort (an int64 index tensor twice the input's
# size) the columns of one chunk are sorted together by a fixed comparator
# network: each comparator is an elementwise min/max of two rows, which is
# vectorised over the chunk and needs no indices.
#
# A chunk row is at most NETWORK_COLUMNS values, torch's grain size for CPU
# elementwise ops, so each min/max runs inline on the calling thread: hundreds
# of tiny parallel regions would each wait at a barrier, which costs a
# scheduler tick per op on a busy (oversubscribed) machine.
NETWORK_COLUMNS = 32768


@functools.cache
def _batcher(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort for ``n`` wires (padded to a power of 2 with +inf, pruned)."""
    size = 1 << max(0, (n - 1).bit_length())
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        pairs.append((i + j, i + j + k))  # wires >= n hold +inf: never swapped
            k //= 2
        p *= 2
    return tuple(pairs)


@functools.cache
def _network(n: int, groups: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Batcher's network minus the trailing comparators that only reorder inside a group.

    ``groups[j]`` labels output position ``j``; positions with the same label
    are interchangeable (e.g. everything below the median). A comparator that is
    the last one on both its wires and joins two wires of one group only
    permutes that group, so it is dropped; repeat backwards.
    """
    kept: list[tuple[int, int]] = []
    touched: set[int] = set()
    for a, b in reversed(_batcher(n)):
        if a not in touched and b not in touched and groups[a] == groups[b]:
            continue
        kept.append((a, b))
        touched.update((a, b))
    return tuple(reversed(kept))


def _sorted_columns(vectors: torch.Tensor, groups: tuple[int, ...]) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
    """Yield ``(start, stop, rows)``: ``rows[j]`` holds the ``j``-th smallest value of each column.

    NaN is ordered as ``+inf``. Positions in one group come out in some order
    inside the group; the input is never written (the network runs on a copy
    of one column chunk at a time).
    """
    n, d = vectors.shape
    net = _network(n, groups)
    itemsize = vectors.element_size()
    width = distances.chunk_width(n, d, itemsize, NETWORK_COLUMNS)
    buf = torch.empty(n * width, dtype=vectors.dtype, device=vectors.device)
    spare_buf = torch.empty(width, dtype=vectors.dtype, device=vectors.device)
    for start, stop in distances.column_chunks(n, d, itemsize, NETWORK_COLUMNS):
        w = stop - start
        rows = list(buf[: n * w].view(n, w).unbind(0))
        for i, row in enumerate(rows):  # row by row: each op stays below the grain size, inline
            torch.nan_to_num(vectors[i, start:stop], nan=math.inf, posinf=math.inf, neginf=-math.inf, out=row)
        spare = spare_buf[:w]
        for a, b in net:
            torch.minimum(rows[a], rows[b], out=spare)
            torch.maximum(rows[a], rows[b], out=rows[b])
            rows[a], spare = spare, rows[a]  # swap buffers instead of copying
        yield start, stop, rows


def _sum_rows(rows: list[torch.Tensor], acc: torch.dtype) -> torch.Tensor:
    """Sum of the given rows in dtype ``acc``, in list order (so the rounding is order-independent)."""
    total = rows[0].to(acc, copy=True)
    for r in rows[1:]:
        total.add_(r)
    return total


def _median_of_sorted(rows: list[torch.Tensor], n: int, acc: torch.dtype) -> torch.Tensor:
    mid = n // 2
    if n % 2:
        return rows[mid].to(acc)
    return rows[mid - 1].to(acc) * 0.5 + rows[mid].to(acc) * 0.5  # halves first: cannot overflow


def _median_groups(n: int) -> tuple[int, ...]:
    """Group labels for a median: everything below it, the median position(s), everything above it."""
    mid = n // 2
    low = mid - (n % 2 == 0)  # first median position: the two middle values are only ever added
    return tuple(0 if j < low else 1 if j <= mid else 2 for j in range(n))


# --------------------------------------------------------------------------- rules


@register_rule("mean")
@torch.no_grad()
def average(vectors: torch.Tensor, *, f: int = 0, pivot: torch.Tensor | None = None, **params: Any) -> torch.Tensor:
    """Arithmetic mean ``(1/n) sum_i x_i``. Not robust: one bad row moves it arbitrarily.

    ``f`` is checked (``n > f``) and otherwise ignored. NaN/inf propagate.
    """
    reject_unknown("mean", params)
    n, _ = _start("mean", vectors, f, pivot, "n > f")
    # one BLAS matrix-vector product; as fast as torch.mean and accumulates half types in float32
    weights = torch.full((n,), 1.0 / n, dtype=distances.small_dtype(vectors.device), device=vectors.device)
    return distances.weighted_rows(vectors, weights)


@register_rule("cwmed")
@torch.no_grad()
def coordinate_wise_median(
    vectors: torch.Tensor, *, f: int = 0, pivot: torch.Tensor | None = None, **params: Any
) -> torch.Tensor:
    """Coordinate-wise median (Yin et al., "Byzantine-Robust Distributed Learning", ICML 2018).

    ``out[k] = median_i x_i[k]``; for even ``n`` the mean of the two middle
    values, ``(x_(n/2)[k] + x_(n/2+1)[k]) / 2`` (as ``torch.quantile(q=0.5)``
    and ByzFL do, not torch.median's lower middle value). NaN counts as
    ``+inf``. Requires ``n > 2f``.
    """
    reject_unknown("cwmed", params)
    n, d = _start("cwmed", vectors, f, pivot, "n > 2f")
    acc = distances.accumulation_dtype(vectors.dtype)
    out = torch.empty(d, dtype=vectors.dtype, device=vectors.device)
    for start, stop, rows in _sorted_columns(vectors, _median_groups(n)):
        out[start:stop] = _median_of_sorted(rows, n, acc)
    return out


@register_rule("cwtm")
@torch.no_grad()
def coordinate_wise_trimmed_mean(
    vectors: torch.Tensor, *, f: int = 0, pivot: torch.Tensor | None = None, **params: Any
) -> torch.Tensor:
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018).

    ``out[k] = (1/(n-2f)) sum_{j=f}^{n-f-1} x_(j)[k]`` where ``x_(0)[k] <= ... <=
    x_(n-1)[k]`` are the sorted values of coordinate ``k``: the ``f`` smallest
    and ``f`` largest values are dropped (NaN counts as ``+inf``). Requires
    ``n > 2f``. For ``f >= 1`` the kept values are summed in sorted order, so
    the result is bit-identical for any row order (``f = 0`` is :func:`average`).
    """
    reject_unknown("cwtm", params)
    n, d = _start("cwtm", vectors, f, pivot, "n > 2f")
    if f == 0:
        return average(vectors)
    acc = distances.accumulation_dtype(vectors.dtype)
    # only the two trimmed ends may stay unsorted; the kept values are summed in order
    groups = tuple(0 if j < f else 1 if j >= n - f else 2 + j for j in range(n))
    out = torch.empty(d, dtype=vectors.dtype, device=vectors.device)
    for start, stop, rows in _sorted_columns(vectors, groups):
        out[start:stop] = _sum_rows(rows[f : n - f], acc).div_(n - 2 * f)
    return out


@register_rule("meamed")
@torch.no_grad()
def mean_around_median(
    vectors: torch.Tensor, *, f: int = 0, pivot: torch.Tensor | None = None, **params: Any
) -> torch.Tensor:
    """Mean around median (Xie et al., "Generalized Byzantine-tolerant SGD", 2018).

    Per coordinate ``k``: with ``m = median_i x_i[k]`` (the cwmed convention),
    ``out[k]`` is the mean of the ``n - f`` values closest to ``m``. In sorted
    order those values are a window ``x_(s..s+n-f-1)``; ``s`` moves up while the
    next value above is strictly closer to ``m`` than the lowest one in the
    window, so equal distances keep the lower value. NaN counts as ``+inf``.
    Requires ``n > 2f``.
    """
    reject_unknown("meamed", params)
    n, d = _start("meamed", vectors, f, pivot, "n > 2f")
    if f == 0:
        return average(vectors)
    acc = distances.accumulation_dtype(vectors.dtype)
    k = n - f
    # the f lowest and f highest positions decide the window: keep them sorted; the middle is summed in order
    groups = tuple(range(n))
    out = torch.empty(d, dtype=vectors.dtype, device=vectors.device)
    for start, stop, rows in _sorted_columns(vectors, groups):
        m = _median_of_sorted(rows, n, acc)
        shift = torch.zeros(stop - start, dtype=torch.int64, device=vectors.device)
        for i in range(f):  # the move condition holds on a prefix of i, so its count is the window start
            shift += (rows[i + k].to(acc) - m) < (m - rows[i].to(acc))
        total = _sum_rows(rows[f : n - f], acc)
        for i in range(f):
            total += torch.where(shift <= i, rows[i].to(acc), 0.0)
            total += torch.where(shift > i, rows[n - f + i].to(acc), 0.0)
        out[start:stop] = total.div_(k)
    return out


def _krum_ranking(vectors: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows by increasing Krum score, and the mask of unmeasurable rows.

    The score of a row is the sum of its squared distances to its ``n - f - 2``
    nearest other rows. Ties (two mutual nearest neighbours share a score whenever ``n - f - 2 = 1``)
    go to the row whose sorted distances are lexicographically smaller, so the
    choice does not depend on the row order (:func:`distances.rank_rows`).
    """
    n = vectors.shape[0]
    dist = distances.pairwise_sq_distances(vectors)
    others = dist.clone().fill_diagonal_(math.inf)  # "other" rows only
    scores = others.sort(dim=1).values[:, : n - f - 2].sum(1)
    return distances.rank_rows(scores, dist), torch.isinf(dist.diagonal())


_KRUM_REQUIREMENT = "n > 2f + 2"  # Blanchard et al. 2017, Prop. 1


@register_rule("krum")
@torch.no_grad()
def krum(vectors: torch.Tensor, *, f: int = 0, pivot: torch.Tensor | None = None, **params: Any) -> torch.Tensor:
    """Krum (Blanchard et al., "Machine Learning with Adversaries", NeurIPS 2017).

    ``score_i = sum_{j in N_i} |x_i - x_j|^2`` over the ``n - f - 2`` rows
    nearest to ``x_i`` (itself excluded); returns the row with the smallest
    score (ties: see :func:`_krum_ranking`). Requires ``n > 2f + 2``, the paper's
    condition (ByzFL only checks ``n > 2f`` and sums over ``n - f - 1``
    neighbours).
    """
    reject_unknown("krum", params)
    n, _ = _start("krum", vectors, f, pivot, _KRUM_REQUIREMENT)
    return vectors[int(_krum_ranking(vectors, f)[0][0])].clone()


@register_rule("multikrum")
@torch.no_grad()
def multi_krum(
    vectors: torch.Tensor, *, f: int = 0, pivot: torch.Tensor | None = None, m: int | None = None, **params: Any
) -> torch.Tensor:
    """Multi-Krum (Blanchard et al., NeurIPS 2017; El Mhamdi et al., ICML 2018).

    Mean of the ``m`` rows with the smallest Krum scores (see :func:`krum`),
    ``m = n - f`` by default, ``1 <= m <= n - f``; ties as in :func:`krum`.
    Requires ``n > 2f + 2``.
    """
    reject_unknown("multikrum", params)
    n, _ = _start("multikrum", vectors, f, pivot, _KRUM_REQUIREMENT)
    m = n - f if m is None else check_int("multikrum", "m", m, minimum=1, maximum=n - f)
    order, bad = _krum_ranking(vectors, f)
    return distances.weighted_rows(vectors, _uniform(n, order[:m], vectors.device), bad)


@register_rule("geometric_median")
@torch.no_grad()
def geometric_median(
    vectors: torch.Tensor,
    *,
    f: int = 0,
    pivot: torch.Tensor | None = None,
    nu: float = 0.1,
    iterations: int = 200,
    tol: float = 1e-6,
    **params: Any,
) -> torch.Tensor:
    """Geometric median by smoothed Weiszfeld (Pillutla et al., "Robust Aggregation for Federated Learning",
    RFA, IEEE TSP 2022; arXiv 2019).

    Approximates ``argmin_z sum_i |z - x_i|`` with the iteration
    ``z <- sum_i w_i x_i / sum_i w_i``, ``w_i = 1 / max(nu, |z - x_i|)``,
    started at the medoid row. Every iterate is an affine combination of the
    rows, ``z = x_c + (X - x_c)^T beta``, so after one Gram matrix the
    iterations cost ``O(n^2)`` each and the input is read once more at the end.
    Stops after ``iterations`` steps or when a step (checked every 10) is
    shorter than ``tol`` times the median distance from ``z`` to the rows (a
    scale outliers cannot inflate). Weiszfeld converges linearly, slowly when
    the median sits near a row, so the result is an approximation of that
    order (ByzFL runs 3 iterations by default). Unmeasurable rows get
    weight 0. ``f`` is checked (``n > 2f``, the breakdown point 1/2) and
    otherwise unused.
    """
    reject_unknown("geometric_median", params)
    n, _ = _start("geometric_median", vectors, f, pivot, "n > 2f")
    nu = check_real("geometric_median", "nu", nu, strict=True)
    iterations = check_int("geometric_median", "iterations", iterations, minimum=0)
    tol = check_real("geometric_median", "tol", tol)
    g, bad, center = distances.robust_gram(vectors)
    if center < 0:
        return average(vectors)  # nothing measurable: garbage in, garbage out
    alive = (~bad).to(g.dtype)
    sq = g.diagonal()
    beta = torch.zeros(n, dtype=g.dtype, device=g.device)  # z = x_c
    for it in range(iterations):
        gb = g @ beta
        dist = (sq - 2.0 * gb + beta @ gb).clamp_min(0.0).sqrt()
        w = alive / dist.clamp_min(nu)
        step = w / w.sum() - beta
        beta = beta + step
        if it % 10 == 9:  # the test syncs with the host: not on every iteration
            scale = torch.where(bad, math.inf, dist).sort().values[(n - 1) // 2]  # robust: median distance
            if float((step @ (g @ step)).clamp_min(0.0).sqrt()) <= tol * float(scale):
                break
    beta[center] += 1.0 - beta.sum()  # z = (1 - sum beta) x_c + sum beta_i x_i
    return distances.weighted_rows(vectors, beta, bad)


@register_rule("centered_clipping")
@torch.no_grad()
def centered_clipping(
    vectors: torch.Tensor,
    *,
    f: int = 0,
    pivot: torch.Tensor | None = None,
    tau: float | None = None,
    iterations: int = 1,
    **params: Any,
) -> torch.Tensor:
    """Centered clipping (Karimireddy et al., "Learning from History for Byzantine Robust Optimization", ICML 2021).

    ``v <- v + (1/n) sum_i (x_i - v) min(1, tau / |x_i - v|)``, ``iterations``
    times (the paper uses 1 with momentum). The start ``v_0`` is ``pivot`` when
    given (pass the previous aggregate / momentum, as in the paper) and the
    coordinate-wise median otherwise (this function keeps no state). ``tau``
    defaults to the median of ``|x_i - v_0|``, a scale-free choice of ours (the
    paper tunes it; ByzFL defaults to 100). Every iterate is
    ``v_0 + (X - v_0)^T beta``, so iterations cost ``O(n^2)`` after one Gram
    matrix. Unmeasurable rows contribute nothing. Requires ``n > 2f``.
    """
    reject_unknown("centered_clipping", params)
    n, _ = _start("centered_clipping", vectors, f, pivot, "n > 2f")
    if tau is not None:
        tau = check_real("centered_clipping", "tau", tau, strict=True)
    iterations = check_int("centered_clipping", "iterations", iterations, minimum=0)
    v0 = coordinate_wise_median(vectors) if pivot is None else pivot.to(vectors.dtype)
    if iterations <= 1:  # only |x_i - v0| is needed: compute it directly (exact, no Gram matrix)
        g = None
        radius = distances.sq_distances_to(vectors, v0).sqrt()
        bad = torch.isinf(radius)
    else:
        g, bad = distances.gram(vectors, v0)
        radius = torch.where(bad, math.inf, g.diagonal().clamp_min(0.0).sqrt())
    alive = (~bad).to(radius.dtype)
    if tau is None:
        tau = float(radius.sort().values[(n - 1) // 2])  # may be 0: then v stays at v0
    beta = torch.zeros(n, dtype=radius.dtype, device=radius.device)  # v = v0
    for _ in range(iterations):
        if g is None:
            dist = radius  # beta = 0 on the first (and only) iteration
        else:
            gb = g @ beta
            dist = (g.diagonal() - 2.0 * gb + beta @ gb).clamp_min(0.0).sqrt()
        # a row at distance 0 has nothing to clip (factor 1); this also avoids 0 / 0 when tau = 0
        clip = alive * torch.where(dist > 0, tau / dist, 1.0).clamp(max=1.0)
        beta = beta * (1.0 - clip.sum() / n) + clip / n
    out = distances.weighted_rows(vectors, beta, bad)
    rest = float(1.0 - beta.sum())
    if rest != 0.0:
        out = out.add_(v0.to(out.dtype), alpha=rest)
    return out


@register_rule("mda")
@torch.no_grad()
def minimum_diameter_averaging(
    vectors: torch.Tensor,
    *,
    f: int = 0,
    pivot: torch.Tensor | None = None,
    max_subsets: int = 100_000,
    **params: Any,
) -> torch.Tensor:
    """Minimum-diameter averaging (El Mhamdi et al., "Genuinely Distributed Byzantine Machine Learning", PODC 2020).

    ``S* = argmin_{|S| = n - f} max_{i, j in S} |x_i - x_j|``, ``out = mean_{i in
    S*} x_i``, by exact search over all ``C(n, f)`` subsets, vectorised over
    subsets: pairs are scanned from the largest distance down and a subset's
    diameter is the first pair it keeps whole. Several subsets often share the
    minimal diameter (it is one pair's distance); the one with the smallest
    sum of squared pairwise distances wins, then the first in enumeration
    order, so the choice does not depend on the row order in practice.
    Refuses with ``ValueError`` when ``C(n, f) > max_subsets``. Requires ``n > 2f``.
    """
    reject_unknown("mda", params)
    n, _ = _start("mda", vectors, f, pivot, "n > 2f")
    max_subsets = check_int("mda", "max_subsets", max_subsets, minimum=1)
    count = math.comb(n, f)
    if count > max_subsets:
        raise ValueError(
            f"mda: exact search needs C(n, f) = C({n}, {f}) = {count} subsets, more than max_subsets={max_subsets}; "
            "lower f or raise max_subsets"
        )
    if f == 0:
        return average(vectors)
    device = vectors.device
    dist = distances.pairwise_sq_distances(vectors)
    kept = ~_subsets_removing(n, f, device)  # (n, count): column s = the rows subset s keeps
    # diameter(S) = distance of the first pair, largest first, with both ends in S; a subset can
    # skip at most the f (n - 1) pairs that touch a removed row, so the scan stops early
    i, j = torch.triu_indices(n, n, 1, device=device)
    pair_dist, order = torch.sort(dist[i, j], descending=True, stable=True)
    i, j = i[order].tolist(), j[order].tolist()
    diameter = torch.full((count,), math.inf, dtype=dist.dtype, device=device)
    step = NETWORK_COLUMNS  # subsets per block: below the grain size, so every op runs inline
    for s in range(0, count, step):
        block = diameter[s : s + step]
        open_ = torch.ones(block.shape[0], dtype=torch.bool, device=device)
        for p in range(len(i)):
            hit = open_ & kept[i[p], s : s + step] & kept[j[p], s : s + step]
            block.masked_fill_(hit, pair_dist[p])
            open_ &= ~hit
            if p % 32 == 31 and not bool(open_.any()):  # a host sync, so only now and then
                break
    tied = torch.nonzero(diameter == diameter.min()).flatten()
    k = kept[:, tied].T.to(dist.dtype)
    spread = ((k @ torch.where(torch.isinf(dist), 0.0, dist)) * k).sum(1)  # sum of squared pairwise distances
    winner = tied[torch.argmin(spread)]
    weights = _uniform(n, torch.nonzero(kept[:, winner]).flatten(), device)
    return distances.weighted_rows(vectors, weights, torch.isinf(dist.diagonal()))


def _subsets_removing(n: int, f: int, device: torch.device) -> torch.Tensor:
    """``(n, C(n, f))`` bool: column ``s`` marks the rows of the ``s``-th ``f``-subset, in itertools order."""
    combos = torch.arange(n, device=device)[:, None]  # the 1-subsets; grow one element at a time
    for _ in range(f - 1):
        rows, vals = torch.nonzero(torch.arange(n, device=device)[None, :] > combos[:, -1:], as_tuple=True)
        combos = torch.cat([combos[rows], vals[:, None]], dim=1)  # row-major nonzero keeps lexicographic order
    marks = torch.zeros(n, combos.shape[0], dtype=torch.bool, device=device)
    return marks.scatter_(0, combos.T, True)


@register_rule("nna")
@torch.no_grad()
def nearest_neighbor_average(
    vectors: torch.Tensor, *, f: int = 0, pivot: torch.Tensor | None = None, **params: Any
) -> torch.Tensor:
    """Nearest-neighbour averaging, the mixing step of MoNNA (Farhadkhani et al., ICML 2023).

    ``out = mean of the n - f rows nearest (L2) to pivot``; the pivot's own row,
    when it is among ``vectors``, is at distance 0 and so always kept. Distances
    are ``((x_i - pivot) ** 2).sum()`` computed directly (exact, ``O(nd)``); ties
    keep the lower index. ``pivot`` is required. Requires ``n > 2f``.
    """
    reject_unknown("nna", params)
    n, _ = _start("nna", vectors, f, None, "n > 2f")
    p = _pivot("nna", pivot, vectors)
    dist = distances.sq_distances_to(vectors, p)
    chosen = torch.sort(dist, stable=True).indices[: n - f]
    return distances.weighted_rows(vectors, _uniform(n, chosen, vectors.device), torch.isinf(dist))


@register_rule("bounded_nna")
@torch.no_grad()
def step_bounded_nearest_neighbor_average(
    vectors: torch.Tensor,
    *,
    f: int = 0,
    pivot: torch.Tensor | None = None,
    anchor: torch.Tensor | None = None,
    c: float = 1.0,
    **params: Any,
) -> torch.Tensor:
    """NNA whose pull on the pivot is bounded by the node's own local step.

    With ``y = nna(vectors, pivot)`` (:func:`nearest_neighbor_average`) and
    ``r = c |pivot - anchor|``::

        out = pivot + min(1, r / |y - pivot|) (y - pivot)

    In MoNNA ``anchor`` is the node's model before its local step and
    ``pivot = anchor - lr_t m_t`` its half-step model, so ``r = c lr_t |m_t|``:
    a round of mixing moves the node by at most ``c`` times its own step.

    Why: NNA's per-round error is bounded by the honest spread (MoNNA,
    Farhadkhani et al., ICML 2023, Lemma on (f, kappa)-robust averaging), and
    an attacker that keeps that error pointing the same way every round
    (ALIE's ``mean - tau std``) adds it up over rounds. Without attack the
    mixing step only undoes the node's deviation from the group's step, so its
    norm is about ``|lr_t m_t|`` (measured ratio 0.83-1.02 over a run); the
    bound keeps that and caps the consistent extra drift of a round at ``c``
    times the step, so the total displacement mixing can add is at most
    ``c sum_t lr_t |m_t|``, the path length of the node's own steps. It is a
    clipping of the mixing displacement around the node's own model, as in
    ClippedGossip (He, Karimireddy, Jaggi, "Byzantine-robust decentralized
    learning via ClippedGossip", 2022), with the radius tied to the local
    step instead of the neighbours' distances (which the attacker controls).

    ``anchor=None`` means ``r = inf``: plain NNA. ``c >= 0``; ``pivot`` is
    required and must be finite, as must ``anchor``. Non-finite rows are
    handled by NNA (never selected while at most ``f``). Requires ``n > 2f``.
    """
    reject_unknown("bounded_nna", params)
    c = check_real("bounded_nna", "c", c)
    _start("bounded_nna", vectors, f, None, "n > 2f")  # errors name this rule, not nna
    pivot = _pivot("bounded_nna", pivot, vectors)
    a = None
    if anchor is not None:
        try:
            a = _pivot("bounded_nna", anchor, vectors)  # the pivot's checks: shape, device, float, finite
        except ValueError as exc:
            raise ValueError(str(exc).replace("pivot", "anchor")) from None
    y = nearest_neighbor_average(vectors, f=f, pivot=pivot)
    if a is None:
        return y
    acc = distances.accumulation_dtype(vectors.dtype)
    p = pivot.to(acc)
    radius = c * float(torch.linalg.vector_norm(p - a.to(acc)))
    move = y.to(acc) - p
    norm = float(torch.linalg.vector_norm(move))
    if norm <= radius:
        return y
    return (p + move * (radius / norm)).to(vectors.dtype)
