"""Pre-aggregations: ``(n, d)`` vectors in, ``(m, d)`` vectors out, applied before a rule.

Every pre-aggregation has the signature::

    pre(vectors, *, f=0, **params) -> Tensor (m, d)

and is registered by name (``get_pre_aggregation("nnm")``). The output is a
new tensor of the input's dtype and device; the input is never modified.
Non-finite rows are passed through unchanged (a clipped or mixed NaN row is
still NaN), so the rule that follows, with the same ``f``, still sees them as
bad and drops them. ``nnm`` and ``arc`` map row ``i`` to row ``i`` (they are
equivariant to the row order); ``bucketing`` shuffles. Like the rules, they run
under ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import distances
from .registry import register_pre_aggregation
from .rules import check_int, check_real, reject_unknown
from .validation import check_f, check_vectors

# largest f each requirement allows
_MAX_F: dict[str, Callable[[int], int]] = {"n > f": lambda n: n - 1, "f <= n": lambda n: n}


def _start(name: str, vectors: torch.Tensor, f: int, requirement: str) -> tuple[int, int]:
    check_vectors(vectors)
    n, d = vectors.shape
    check_f(f, n, max_f=_MAX_F[requirement](n), rule=name, requirement=requirement)
    return n, d


@register_pre_aggregation("nnm")
@torch.no_grad()
def nearest_neighbor_mixing(vectors: torch.Tensor, *, f: int = 0, **params: Any) -> torch.Tensor:
    """Nearest-neighbour mixing (Allouah et al., "Fixing by Mixing", AISTATS 2023).

    ``y_i = mean of the n - f rows nearest (L2) to x_i``, ``x_i`` itself
    included (distance 0); ties keep the lower index. All ``n^2`` distances come
    from one Gram matrix and the mixing is one ``(n, n) @ (n, d)`` product.
    Unmeasurable rows (NaN/inf) are never anyone's neighbour while at least
    ``n - f`` rows are measurable, and are passed through unchanged. Requires
    ``n > f``.
    """
    reject_unknown("nnm", params)
    n, _ = _start("nnm", vectors, f, "n > f")
    k = n - f
    dist = distances.pairwise_sq_distances(vectors)
    bad = torch.isinf(dist.diagonal())
    nearest = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    weights = torch.zeros_like(dist).scatter_(1, nearest, 1.0 / k)
    if not bool(bad.any()):
        return distances.weighted_rows(vectors, weights, bad)
    out = vectors.clone()  # bad rows pass through; the others are overwritten
    good = torch.nonzero(~bad).flatten()
    out[good] = distances.weighted_rows(vectors, weights[good], bad)
    return out


@register_pre_aggregation("bucketing")
@torch.no_grad()
def bucketing(
    vectors: torch.Tensor,
    *,
    f: int = 0,
    bucket_size: int = 2,
    generator: torch.Generator | None = None,
    **params: Any,
) -> torch.Tensor:
    """Bucketing (Karimireddy et al., "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing", ICLR 2022).

    Shuffle the rows with a random permutation ``pi`` and average them in
    buckets of ``s = bucket_size``: ``y_b = mean_{j < s} x_{pi(bs + j)}``, for
    ``ceil(n / s)`` buckets (the last one holds the ``n mod s`` leftover rows,
    if any). The permutation is drawn from ``generator`` (reproducible) or from
    the global RNG of the vectors' device. A bucket that holds a non-finite row
    is non-finite. ``f`` is checked and unused: the rule after bucketing still
    faces up to ``f`` bad buckets.
    """
    reject_unknown("bucketing", params)
    n, d = _start("bucketing", vectors, f, "f <= n")
    s = check_int("bucketing", "bucket_size", bucket_size, minimum=1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"bucketing: generator must be a torch.Generator or None, got {type(generator).__name__}")
    device = vectors.device if generator is None else generator.device
    perm = torch.randperm(n, generator=generator, device=device).to(vectors.device)
    full, rest = divmod(n, s)
    acc = distances.accumulation_dtype(vectors.dtype)
    itemsize = torch.finfo(acc).bits // 8
    out = torch.empty(full + (rest > 0), d, dtype=vectors.dtype, device=vectors.device)
    buf = distances.work_buffer(n, distances.chunk_width(n, d, itemsize), acc, vectors.device)
    for start, stop in distances.column_chunks(n, d, itemsize):
        block = distances.block_view(buf, n, stop - start)  # shuffled rows: buckets never mix rows outside them
        if acc == vectors.dtype:
            torch.index_select(vectors[:, start:stop], 0, perm, out=block)
        else:
            block.copy_(vectors[perm, start:stop])
        if full:
            out[:full, start:stop] = block[: full * s].view(full, s, stop - start).mean(1)
        if rest:
            out[full, start:stop] = block[full * s :].mean(0)
    return out


def _clip(vectors: torch.Tensor, norms: torch.Tensor, threshold: float) -> torch.Tensor:
    """Scale rows with norm above ``threshold`` down to it; non-finite rows pass through."""
    scale = torch.where(torch.isfinite(norms) & (norms > threshold), threshold / norms, 1.0)
    return distances.scale_rows(vectors, scale)


@register_pre_aggregation("clipping")
@torch.no_grad()
def static_clipping(vectors: torch.Tensor, *, f: int = 0, c: float = 2.0, **params: Any) -> torch.Tensor:
    """Static clipping: ``y_i = x_i min(1, c / |x_i|)``, every row clipped to L2 norm ``c``.

    ``c = 2.0`` by default, as in ByzFL. Non-finite rows pass through. ``f`` is
    checked and unused.
    """
    reject_unknown("clipping", params)
    _start("clipping", vectors, f, "f <= n")
    c = check_real("clipping", "c", c)
    return _clip(vectors, distances.row_norms(vectors), c)


@register_pre_aggregation("arc")
@torch.no_grad()
def adaptive_robust_clipping(vectors: torch.Tensor, *, f: int = 0, **params: Any) -> torch.Tensor:
    """Adaptive robust clipping, ARC (Allouah et al., "Boosting Robustness by Clipping Gradients in
    Distributed Learning", 2024).

    With ``k = floor(2 (f / n) (n - f))``, the ``k`` rows of largest norm are
    clipped to the norm of the ``(k+1)``-th largest, ``y_i = x_i min(1, t / |x_i|)``
    with ``t = |x|_(k+1)`` (as ByzFL's ``ARC``). Rows tied with ``t`` are not
    changed, so the result does not depend on how ties are ordered.
    Non-finite rows count as the largest and pass through. Requires ``n > f``.
    """
    reject_unknown("arc", params)
    n, _ = _start("arc", vectors, f, "n > f")
    k = (2 * f * (n - f)) // n  # exact integer floor of 2 (f/n) (n - f)
    if k == 0:
        return vectors.clone()
    norms = distances.row_norms(vectors)
    key = torch.where(torch.isfinite(norms), norms, torch.inf)  # NaN rows count as largest
    threshold = float(torch.sort(key, descending=True, stable=True).values[k])
    return _clip(vectors, norms, threshold)
