"""Hand-checked examples for every pre-aggregation, and their argument errors."""

from __future__ import annotations

import math

import pytest
import torch

from ostracon.aggregator import PRE_AGGREGATIONS, aggregate, get_pre_aggregation

T = torch.float64


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=T)


def close(actual: torch.Tensor, expected, atol: float = 1e-9) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0, equal_nan=True)


nnm = get_pre_aggregation("nnm")
bucketing = get_pre_aggregation("bucketing")
clipping = get_pre_aggregation("clipping")
arc = get_pre_aggregation("arc")

# --------------------------------------------------------------------------- nnm


def test_nnm_hand():
    # n=4, f=1: each row -> mean of its 3 nearest, itself included
    #   0: {0,1,3}   1: {1,0,3} (|1-3|=2 < |1-10|=9)   3: {3,1,0} (2,3 < 7)   10: {10,3,1} (7,9 < 10)
    out = nnm(t([[0.0], [1.0], [3.0], [10.0]]), f=1)
    close(out, [[4 / 3], [4 / 3], [4 / 3], [14 / 3]])


def test_nnm_f0_replaces_every_row_by_the_mean():
    x = t([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    close(nnm(x, f=0), [[2.0, 4.0]] * 3)


def test_nnm_passes_non_finite_rows_through_and_never_mixes_them():
    x = t([[0.0], [1.0], [math.nan], [3.0], [math.inf]])
    out = nnm(x, f=2)
    # finite rows: mean of the 3 nearest finite rows = all three of 0, 1, 3
    close(out, [[4 / 3], [4 / 3], [math.nan], [4 / 3], [math.inf]])


# --------------------------------------------------------------------------- bucketing


def test_bucketing_hand_with_generator():
    x = t([[0.0], [1.0], [2.0], [3.0], [4.0]])
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(7))  # the documented draw
    out = bucketing(x, bucket_size=2, generator=torch.Generator().manual_seed(7))
    p = perm.tolist()
    # buckets: (p0, p1), (p2, p3), (p4) -- the last one holds the leftover row
    close(out, [[(p[0] + p[1]) / 2], [(p[2] + p[3]) / 2], [p[4]]])


def test_bucketing_is_reproducible_and_uses_the_generator():
    x = torch.randn(40, 3, dtype=T)
    a = bucketing(x, bucket_size=4, generator=torch.Generator().manual_seed(1))
    b = bucketing(x, bucket_size=4, generator=torch.Generator().manual_seed(1))
    c = bucketing(x, bucket_size=4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (10, 3)
    close(a.mean(0), x.mean(0), atol=1e-12)  # equal buckets: the mean of the means is the mean


def test_bucketing_size_one_permutes_and_size_n_averages():
    x = torch.randn(6, 2, dtype=T)
    out = bucketing(x, bucket_size=1, generator=torch.Generator().manual_seed(0))
    assert sorted(out[:, 0].tolist()) == sorted(x[:, 0].tolist())
    close(bucketing(x, bucket_size=6), x.mean(0, keepdim=True), atol=1e-12)
    close(bucketing(x, bucket_size=100), x.mean(0, keepdim=True), atol=1e-12)


def test_bucketing_keeps_nan_inside_its_bucket():
    x = t([[0.0], [1.0], [math.nan], [3.0]])
    out = bucketing(x, bucket_size=2, generator=torch.Generator().manual_seed(3))
    assert int(torch.isnan(out).sum()) == 1  # exactly one bucket is bad, the other is finite


# --------------------------------------------------------------------------- clipping


def test_clipping_hand():
    # norms 5, 0.5, 0 -> (3,4) scaled by 1/5; the others are within c = 1
    close(clipping(t([[3, 4], [0.3, 0.4], [0, 0]]), c=1.0), [[0.6, 0.8], [0.3, 0.4], [0, 0]])


def test_clipping_default_c_is_2_and_c_0_zeroes():
    close(clipping(t([[3, 4]])), [[1.2, 1.6]])
    close(clipping(t([[3, 4], [0, 0]]), c=0.0), [[0, 0], [0, 0]])


def test_clipping_huge_finite_row_is_clipped_not_zeroed():
    x = torch.full((1, 100), 1e30, dtype=torch.float32)  # |x|^2 overflows float32
    close(clipping(x, c=10.0), torch.full((1, 100), 1.0, dtype=torch.float32), atol=1e-5)


# --------------------------------------------------------------------------- arc


ARC5 = [[3, 4], [0, 1], [6, 8], [1, 0], [0, 2]]  # norms 5 1 10 1 2


def test_arc_hand_f1():
    # k = floor(2 * 1/5 * 4) = floor(1.6) = 1: clip the largest (10) to the 2nd largest norm (5)
    close(arc(t(ARC5), f=1), [[3, 4], [0, 1], [3, 4], [1, 0], [0, 2]])


def test_arc_hand_f2():
    # k = floor(2 * 2/5 * 3) = floor(2.4) = 2: clip norms 10 and 5 to the 3rd largest (2)
    close(arc(t(ARC5), f=2), [[1.2, 1.6], [0, 1], [1.2, 1.6], [1, 0], [0, 2]])


def test_arc_f0_is_a_copy():
    x = t(ARC5)
    out = arc(x, f=0)
    close(out, ARC5)
    assert out.data_ptr() != x.data_ptr()


def test_arc_non_finite_rows_count_as_largest_and_pass_through():
    x = t([[3, 4], [0, 1], [math.nan, 0], [1, 0], [0, 2]])
    # k = 1: the NaN row is "the largest" and passes through; no finite row is clipped
    close(arc(x, f=1), [[3, 4], [0, 1], [math.nan, 0], [1, 0], [0, 2]])


def test_pre_then_rule_with_nan_rows():
    x = t([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [math.nan, 5.0], [math.inf, -math.inf]])
    for pre in (["nnm"], ["arc"], [("clipping", {"c": 1.0})], ["arc", "nnm"]):
        out = aggregate(x, "cwtm", f=2, pre=pre)
        assert torch.isfinite(out).all(), pre


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", sorted(PRE_AGGREGATIONS))
def test_pre_aggregation_argument_errors(name):
    x = torch.randn(5, 3, dtype=T)
    fn = get_pre_aggregation(name)
    with pytest.raises(ValueError, match="empty"):
        fn(torch.empty(0, 3))
    with pytest.raises(ValueError, match="2-D"):
        fn(torch.zeros(3))
    with pytest.raises(ValueError, match="floating-point"):
        fn(torch.zeros(5, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) 'bogus'"):
        fn(x, bogus=1)
    with pytest.raises(ValueError, match="f must be >= 0"):
        fn(x, f=-1)
    requirement = {"nnm": "n > f", "arc": "n > f"}.get(name, "f <= n")
    too_big = 5 if requirement == "n > f" else 6
    with pytest.raises(ValueError, match=rf"f={too_big} is too large for n=5 \(requires {requirement}\)"):
        fn(x, f=too_big)


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("bucketing", {"bucket_size": 0}, "bucket_size must be >= 1"),
        ("bucketing", {"bucket_size": 2.0}, "bucket_size must be an int"),
        ("bucketing", {"generator": 3}, "generator must be a torch.Generator"),
        ("clipping", {"c": -1.0}, "c must be >= 0"),
        ("clipping", {"c": math.nan}, "c must be a finite real"),
    ],
)
def test_bad_parameter_values(name, params, message):
    with pytest.raises(ValueError, match=message):
        get_pre_aggregation(name)(torch.randn(5, 3, dtype=T), **params)
