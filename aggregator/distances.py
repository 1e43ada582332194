"""Distance and row-combination helpers shared by the rules and pre-aggregations.

Everything here works on a stacked ``(n, d)`` tensor with ``n`` small (workers)
and ``d`` large (model size), so the rules of thumb are:

* the ``n x n`` quantities (Gram matrix, distances, weights) are tiny and are
  kept in float64 (float32 on MPS, which has no float64);
* the ``n x d`` input is read in place and never copied whole: work that needs
  a temporary (centring, up-casting half precision, dropping rows) runs over
  column chunks of at most :data:`CHUNK_BYTES` bytes.

Non-finite input is handled once, here: a row is *unmeasurable* when it holds a
NaN or an infinity, or when its squared norm overflows the accumulation dtype.
Its distance to every row, itself included, is ``+inf``, so a rule that keeps
the nearest rows never picks it while enough measurable rows exist, and a
zero weight on it never meets a NaN (rows with zero weight are never read).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

# A column chunk of the work buffer: small enough to stay in the last-level cache between the two ops a
# chunk goes through, large enough that a call makes few parallel regions (each one waits at a barrier,
# which costs a scheduler tick on a busy machine).
CHUNK_BYTES = 8 << 20
MIN_CHUNK = 1024  # columns; keeps the per-chunk Python overhead small for large n
_HALF = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype that sums of ``dtype`` values are accumulated in (float32 for half types)."""
    return torch.float32 if dtype in _HALF else dtype


def small_dtype(device: torch.device) -> torch.dtype:
    """Dtype of the ``n x n`` bookkeeping: float64, except where the device lacks it."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def chunk_width(n: int, d: int, itemsize: int = 4, max_width: int | None = None) -> int:
    """Columns per chunk: an ``(n, width)`` block of about :data:`CHUNK_BYTES`, at least :data:`MIN_CHUNK`."""
    width = max(MIN_CHUNK, CHUNK_BYTES // max(1, n * itemsize))
    return min(d, width if max_width is None else min(width, max_width))


def column_chunks(n: int, d: int, itemsize: int = 4, max_width: int | None = None) -> Iterator[tuple[int, int]]:
    """Yield the ``(start, stop)`` column ranges of width :func:`chunk_width` covering ``0..d``."""
    width = chunk_width(n, d, itemsize, max_width)
    for start in range(0, d, width):
        yield start, min(d, start + width)


def work_buffer(rows: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Flat work buffer reused by every chunk (one allocation per call)."""
    return torch.empty(rows * width, dtype=dtype, device=device)


def block_view(buf: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """Contiguous ``(rows, width)`` view at the start of ``buf`` (BLAS prefers contiguous operands)."""
    return buf[: rows * width].view(rows, width)


def _fast(vectors: torch.Tensor) -> bool:
    # float32/float64 go straight to BLAS; half types need a float32 copy per chunk.
    return vectors.dtype not in _HALF


def gram(vectors: torch.Tensor, center: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram matrix ``G = (X - c)(X - c)^T`` and the mask of unmeasurable rows.

    One matrix product, accumulated in float32 for half inputs and in the
    input dtype otherwise; when ``center`` is given the centring happens one
    column chunk at a time so no ``(n, d)`` temporary is ever made. Centring
    on a point near the data removes the cancellation of
    ``|x|^2 + |y|^2 - 2<x, y>`` when the vectors share a large common part.

    Returns ``(G, bad)``: ``G`` is ``(n, n)`` in :func:`small_dtype`, symmetric,
    with the rows and columns of unmeasurable rows set to 0; ``bad`` is the
    ``(n,)`` bool mask of those rows (non-finite entries, or a squared norm that
    overflows).
    """
    n, d = vectors.shape
    sdt = small_dtype(vectors.device)
    if center is None and _fast(vectors):
        g = (vectors @ vectors.T).to(sdt)
    else:
        acc = accumulation_dtype(vectors.dtype)
        g = torch.zeros(n, n, dtype=sdt, device=vectors.device)
        itemsize = torch.finfo(acc).bits // 8
        buf = work_buffer(n, chunk_width(n, d, itemsize), acc, vectors.device)
        c = None if center is None else center.to(acc)
        for start, stop in column_chunks(n, d, itemsize):
            block = block_view(buf, n, stop - start)
            if c is not None and acc == vectors.dtype:
                torch.sub(vectors[:, start:stop], c[start:stop], out=block)  # one pass: gather + centre
            else:
                block.copy_(vectors[:, start:stop])
                if c is not None:
                    block.sub_(c[start:stop])
            g += (block @ block.T).to(sdt)
    g = 0.5 * (g + g.T)  # BLAS need not return an exactly symmetric product
    bad = ~torch.isfinite(g.diagonal())
    if bool(bad.any()):
        g = g.masked_fill(bad[:, None] | bad[None, :], 0.0)
    return g, bad


def distances_from_gram(g: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """Squared distances ``G_ii + G_jj - 2 G_ij``, clamped at 0, ``+inf`` for unmeasurable rows."""
    sq = g.diagonal()
    dist = (sq[:, None] + sq[None, :] - 2.0 * g).clamp_min_(0.0)
    dist.fill_diagonal_(0.0)  # exact: a row is at distance 0 from itself
    dist = torch.where(torch.isnan(dist), torch.inf, dist)  # overflowed cross terms
    return dist.masked_fill_(bad[:, None] | bad[None, :], torch.inf)


def rank_rows(score: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """Row indices by increasing ``score``; ties by the sorted distance profile, then by index.

    Ties in a distance-based score are common (two mutual nearest neighbours
    share their nearest-neighbour distance), so breaking them by index would
    make the choice depend on the row order. Comparing the rows' sorted
    distances to all rows lexicographically breaks every tie that is not a
    true symmetry of the data. ``O(n^2 log n)`` on the ``n x n`` matrix.
    """
    keys = [score, *dist.sort(dim=1).values.unbind(1)]
    order = torch.arange(score.shape[0], device=score.device)
    for key in reversed(keys):  # least significant key first; stable sorts keep earlier keys' order
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def medoid(dist: torch.Tensor) -> int:
    """The measurable row whose median squared distance to the rows is smallest (ties: :func:`rank_rows`).

    With more unmeasurable rows than measurable ones (every median infinite),
    the first measurable row.
    """
    n = dist.shape[0]
    measurable = torch.isfinite(dist.diagonal())
    median = dist.sort(dim=1).values[:, (n - 1) // 2]
    if not bool(torch.isfinite(median).any()):
        return int(torch.argmax(measurable.to(torch.uint8)))
    return int(rank_rows(median, dist)[0])


CENTRING_GAIN = 8.0  # centre (a second pass) only if it cuts the cancellation error by more than this


def robust_gram(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Gram matrix centred on a robust centre row: ``(G, bad, center)``.

    ``center`` is the medoid of a first, uncentred Gram pass (a real row whose
    median distance to the others is smallest, so a few huge Byzantine rows
    cannot move it) and ``G = (X - x_c)(X - x_c)^T``; ``center`` is -1 when no
    row is measurable.

    The rounding error of ``|x_i|^2 + |x_c|^2 - 2 <x_i, x_c>`` scales with
    ``|x_i|^2 + |x_c|^2``, that of the centred product with ``|x_i - x_c|^2``.
    When every row's ratio of the two is at most :data:`CENTRING_GAIN` (e.g.
    gradients without a large common part) centring buys little, and ``G`` is
    derived from the first pass by algebra, ``G_ij - G_ic - G_cj + G_cc``;
    otherwise (e.g. model parameters that share most of their value, or a row
    that duplicates the centre) a second, centred pass computes it. Either way
    no ``(n, d)`` temporary.
    """
    g0, bad0 = gram(vectors)
    if bool(bad0.all()):
        return g0, bad0, -1
    d0 = distances_from_gram(g0, bad0)
    center = medoid(d0)
    sq = g0.diagonal()
    others = ~bad0
    others[center] = False
    gain = (sq[others] + sq[center]) / d0[center, others]  # a distance of 0 gives inf: centre
    if not bool(others.any()) or float(gain.max()) <= CENTRING_GAIN:
        col = g0[:, center]
        g, bad = g0 - col[:, None] - col[None, :] + g0[center, center], bad0
    else:
        g, bad = gram(vectors, vectors[center])
        bad = bad | bad0
    return g.masked_fill(bad[:, None] | bad[None, :], 0.0), bad, center


def pairwise_sq_distances(vectors: torch.Tensor) -> torch.Tensor:
    """``(n, n)`` squared L2 distances through the Gram matrix of :func:`robust_gram`.

    ``D_ij = |x_i - c|^2 + |x_j - c|^2 - 2 <x_i - c, x_j - c>``: never a loop
    over pairs, never an ``(n, n, d)`` temporary; extra memory is one column
    chunk. Centring on a central row keeps float32 cancellation at the scale
    of the spread of the rows, not of their norms.

    Returns a symmetric tensor in :func:`small_dtype` with a zero diagonal and
    ``+inf`` in the rows and columns of unmeasurable rows (their diagonal
    included).
    """
    g, bad, _ = robust_gram(vectors)
    return distances_from_gram(g, bad)


def sq_distances_to(vectors: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """``((vectors - point) ** 2).sum(1)`` computed directly (no Gram cancellation), ``+inf`` if non-finite.

    One column chunk at a time: ``x - p`` into a reused buffer, then its row
    norms (float32 arithmetic for half inputs); no ``(n, d)`` temporary.
    """
    n, d = vectors.shape
    sdt = small_dtype(vectors.device)
    acc = accumulation_dtype(vectors.dtype)
    itemsize = torch.finfo(acc).bits // 8
    p = point.to(acc)
    dist = torch.zeros(n, dtype=sdt, device=vectors.device)
    buf = work_buffer(n, chunk_width(n, d, itemsize), acc, vectors.device)
    for start, stop in column_chunks(n, d, itemsize):
        block = block_view(buf, n, stop - start)
        if acc == vectors.dtype:
            torch.sub(vectors[:, start:stop], p[start:stop], out=block)
        else:
            block.copy_(vectors[:, start:stop]).sub_(p[start:stop])
        dist += torch.linalg.vector_norm(block, dim=1).to(sdt).square()
    return torch.where(torch.isfinite(dist), dist, torch.inf)


def row_norms(vectors: torch.Tensor) -> torch.Tensor:
    """L2 norm of every row, in :func:`small_dtype`; overflow-safe for finite rows, NaN/inf otherwise."""
    n, d = vectors.shape
    sdt = small_dtype(vectors.device)
    if _fast(vectors):
        norms: torch.Tensor = torch.linalg.vector_norm(vectors, dim=1).to(sdt)
    else:
        sq = torch.zeros(n, dtype=sdt, device=vectors.device)
        for start, stop in column_chunks(n, d):
            sq += vectors[:, start:stop].float().square().sum(1).to(sdt)
        norms = sq.sqrt()
    for i in torch.nonzero(~torch.isfinite(norms)).flatten().tolist():
        row = vectors[i]
        if bool(torch.isfinite(row).all()):  # the sum of squares overflowed: rescale by the max
            peak = row.abs().amax().to(accumulation_dtype(row.dtype))
            scaled = torch.linalg.vector_norm(row.to(peak.dtype) / peak)
            norms[i] = peak.to(sdt) * scaled.to(sdt)
    return norms


def weighted_rows(vectors: torch.Tensor, weights: torch.Tensor, bad: torch.Tensor | None = None) -> torch.Tensor:
    """``weights @ vectors``, never reading the rows that may hold NaN/inf.

    ``weights`` is ``(n,)`` (result ``(d,)``) or ``(m, n)`` (result ``(m, d)``),
    in any float dtype; the result has ``vectors``'s dtype and device. A NaN
    row must not be read even with weight 0 (``0 * nan`` is ``nan``): with
    ``bad`` (a mask of the rows that may be non-finite, e.g. the unmeasurable
    ones) the other rows are known finite and are all read, so when no row is
    bad the product is one BLAS call over every row; without ``bad`` every
    zero-weight row is skipped. Skipped rows are left out one column chunk at
    a time (and half types are up-cast per chunk), never with a full copy.
    """
    n, d = vectors.shape
    vector_out = weights.dim() == 1
    w2 = weights[None, :] if vector_out else weights
    read = (w2 != 0).any(0) if bad is None else ~bad | (w2 != 0).any(0)
    used = torch.nonzero(read).flatten()
    if _fast(vectors) and used.numel() == n:
        out = w2.to(vectors.dtype) @ vectors
        return out[0] if vector_out else out
    acc = accumulation_dtype(vectors.dtype)
    w_used = w2[:, used].to(acc)
    out = torch.empty(w2.shape[0], d, dtype=vectors.dtype, device=vectors.device)
    k = used.numel()
    itemsize = torch.finfo(acc).bits // 8
    buf = work_buffer(k, chunk_width(max(k, 1), d, itemsize), acc, vectors.device)
    for start, stop in column_chunks(max(k, 1), d, itemsize):
        block = block_view(buf, k, stop - start)
        if acc == vectors.dtype:
            torch.index_select(vectors[:, start:stop], 0, used, out=block)
        else:
            block.copy_(vectors[used, start:stop])
        out[:, start:stop] = w_used @ block
    return out[0] if vector_out else out


def scale_rows(vectors: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``vectors * scale[:, None]`` as a new tensor (float32 arithmetic for half inputs)."""
    n, d = vectors.shape
    if _fast(vectors):
        return vectors * scale.to(vectors.dtype)[:, None]
    s = scale.to(torch.float32)[:, None]
    out = torch.empty_like(vectors)
    for start, stop in column_chunks(n, d):
        out[:, start:stop] = vectors[:, start:stop].float() * s
    return out
