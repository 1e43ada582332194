"""Smoke test of bench/robustness.py: a 2 attacks x 2 rules slice of the benchmark, few rounds, one seed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_robustness", ROOT / "bench" / "robustness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def base(bench):
    from ostracon.cluster.config import load

    return load(bench.DEFAULT_CONFIG)


def test_cells_table_and_ranking(bench, base):
    attacks, rules = ["sign_flip", "gaussian"], ["server+mean", "monna"]
    lines = []
    cells = bench.run_benchmark(base, attacks, rules, seeds=[0], rounds=100, log=lines.append)
    assert set(cells) == {(a, r) for a in attacks for r in rules}
    assert len(lines) == 4  # one progress line per cell
    acc = {key: cell["mean"] for key, cell in cells.items()}

    # MoNNA learns despite sign flipping, and Gaussian noise does not move it (NNA drops the noise) ...
    assert acc[("sign_flip", "monna")] >= 0.8
    assert acc[("gaussian", "monna")] >= 0.8
    # ... while the attacks are real: Gaussian noise (sigma 200) costs D-SGD a large part of its accuracy.
    assert acc[("sign_flip", "monna")] > acc[("gaussian", "server+mean")] + 0.2
    assert acc[("gaussian", "monna")] > acc[("gaussian", "server+mean")] + 0.2
    for cell in cells.values():
        assert 0.0 <= cell["worst_min"] <= cell["min"] <= cell["mean"] <= 1.0

    table = bench.format_table(cells, attacks, rules)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0] == "| attack | server+mean | monna |"
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| sign_flip", "| gaussian", "| **worst case**"]
    worst = bench.worst_cases(cells, attacks, rules)
    assert worst["server+mean"]["attack"] == "gaussian"
    assert worst["monna"]["mean"] == min(cells[(a, "monna")]["mean"] for a in attacks)


def test_attack_none_means_no_byzantine_and_configs(bench, base):
    none = bench.cell_config(base, "none", "monna", seed=1, rounds=5)
    assert none.byzantine.count == 0 and none.training.workers == 10 and none.training.f == 3
    assert none.seed == 1 and none.training.rounds == 5
    cwtm = bench.cell_config(base, "alie", "server+nnm+cwtm", seed=0)
    assert (cwtm.training.protocol, cwtm.training.rule, cwtm.training.pre) == ("server", "cwtm", ("nnm",))
    assert cwtm.byzantine.count == 3 and cwtm.byzantine.behaviour == "alie"
    with pytest.raises(ValueError, match="unknown attack"):
        bench.cell_config(base, "teleport", "monna", seed=0)


def test_shared_attack_backend_is_bit_identical(bench, base):
    # The benchmark computes a deterministic attack once per round for the 3 attackers.
    assert bench.check_shared_attack(base, "alie_optimized", "server+cwtm", rounds=3)


def test_pre_aggregation_once_is_bit_identical(bench, base):
    # monna+nnm: the shared backend pre-mixes each line-search candidate once instead of once per pivot.
    assert bench.check_shared_attack(base, "alie_optimized", "monna+nnm", rounds=3)


def test_diverged_run_is_scored_zero_not_a_crash(bench, base):
    # D-SGD without a server under FOE(eps = 9): the mixed model is -2x the honest mean every round and
    # overflows after ~130 rounds; the run must finish, marked diverged and scored 0.
    foe9 = base.replace(**{"byzantine.behaviour": "foe", "byzantine.params": {"eps": 9.0}})
    run = bench.run_cell(foe9, "foe", "monna+mean", seed=0, rounds=150)
    assert run["diverged"] and run["mean"] == run["min"] == 0.0
    cell = bench.summarise([run])
    assert "(1 diverged)" in bench._cell_text(cell)


def test_honest_split_gives_the_data_to_honest_workers(bench, base):
    from ostracon.cluster.execution.plan import make_plan

    def sizes(attack, split):
        plan = make_plan(bench.cell_config(base, attack, "monna", seed=0, rounds=5, split=split))
        return [len(plan.shard_ids(j)) for j in range(10)], plan

    everyone, plan_all = sizes("alie", "all")
    honest_only, plan_honest = sizes("alie", "honest")
    assert all(s > 0 for s in everyone) and honest_only[7:] == [0, 0, 0]
    assert sum(everyone) == sum(honest_only) and min(honest_only[:7]) > 0  # the same samples, 7 holders
    assert len(plan_all.test_labels) == len(plan_honest.test_labels)
    # a Byzantine worker that trains keeps its strength: it copies an honest worker's rows
    flipped, _ = sizes("label_flip", "honest")
    assert flipped[7:] == flipped[:3]
    with pytest.raises(ValueError, match="unknown split"):
        bench.cell_config(base, "alie", "monna", seed=0, split="byzantine")


def test_attack_rows_configure_their_variants(bench, base):
    both = bench.cell_config(base, "alie_optimized_both", "monna+nnm", seed=0)
    assert both.byzantine.behaviour == "alie_optimized" and dict(both.byzantine.params) == {"sign": 0}
    assert tuple(both.training.pre) == ("nnm",) and both.training.rule == "nna"
    mimic = bench.cell_config(base, "mimic_worst", "monna", seed=0, target=4)
    assert mimic.byzantine.behaviour == "mimic" and dict(mimic.byzantine.params) == {"target": 4}
    assert bench.cell_config(base, "mimic_variant", "monna", seed=0).byzantine.behaviour == "mimic_variant"


# ----------------------------------------------------------------------------------------------- peers and presets

BYZFL_INSTALLED = importlib.util.find_spec("byzfl") is not None


def test_presets_fill_what_is_not_given(bench):
    quick = bench.parse_args(["--quick"])
    assert quick.seeds == 3 and quick.split == "all"
    assert quick.attacks == ["none", *bench.QUICK_ATTACKS] and len(bench.QUICK_ATTACKS) == 8
    assert quick.rules == list(bench.RULES) and set(bench.PEERS) <= set(quick.rules)
    full = bench.parse_args(["--full", "--jobs", "2"])
    assert full.seeds == 5 and full.split == "both" and full.attacks == list(bench.ATTACKS)
    assert full.rules[0] == bench.DEFAULT_RULE and set(bench.PEERS) <= set(full.rules)
    mine = bench.parse_args(["--quick", "--seeds", "1", "--rules", "monna+nnm", "--alpha", "1,0.1"])
    assert (mine.seeds, mine.rules, mine.attacks, mine.alpha) == (1, ["monna+nnm"], quick.attacks, [1.0, 0.1])
    plain = bench.parse_args([])
    assert (plain.seeds, plain.split, plain.alpha) == (5, "both", None) and plain.rules == list(bench.RULES)
    for bad in (["--quick", "--full"], ["--alpha", "0"], ["--alpha", "1,x"], ["--alpha", "1,1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_peer_columns_run_on_the_server_and_register_only_while_running(bench, base):
    from ostracon.aggregator import RULES

    for column, (pre, aggregator) in bench.PEERS.items():
        assert bench.RULES[column] == {"training.protocol": "server", "training.rule": bench.peer_rule_name(column),
                                       "training.pre": []}
        assert pre[-1] == "NNM" and aggregator in ("TrMean", "Krum")
    names = {bench.peer_rule_name(c) for c in bench.PEERS}
    assert not names & set(RULES)  # the package's registry has no benchmark rule ...
    with bench.peer_rules(["monna", *bench.PEERS]):
        assert names <= set(RULES)  # ... the benchmark adds its own only while a peer run needs them
        with bench.peer_rules(bench.PEERS):
            pass  # nested: the inner block added nothing, so it removes nothing
        assert names <= set(RULES)
    assert not names & set(RULES)


def test_peer_columns_without_byzfl_fail_early_and_clearly(bench, base, monkeypatch):
    monkeypatch.setattr(bench, "BYZFL_PACKAGE", "byzfl_missing_for_this_test")
    monkeypatch.setattr(bench, "_BYZFL", None)
    with pytest.raises(bench.PeerUnavailable, match=r"byzfl_missing_for_this_test is not installed: "
                                                 r"pip install --no-deps byzfl==0\.0\.11"):
        bench.run_benchmark(base, ["none"], ["server+mean", "byzfl+nnm+trmean"], seeds=[0], rounds=1)
    with pytest.raises(SystemExit, match="robustness: the byzfl"):
        bench.main(["--seeds", "1", "--rounds", "1", "--attacks", "none", "--rules", "byzfl+nnm+krum"])
    bench.require_peers(["monna+nnm", "server+nnm+cwtm"])  # ostracon's own columns never need ByzFL


def test_several_alphas_are_columns_side_by_side(bench, capsys):
    assert bench.main(["--seeds", "1", "--rounds", "2", "--attacks", "none", "--rules", "server+mean",
                       "--split", "all", "--alpha", "1,0.1"]) == 0
    text = capsys.readouterr().out
    assert "| attack | server+mean @ alpha=1 | server+mean @ alpha=0.1 |" in text
    assert "alpha = 1, 0.1 (one column per rule and alpha)" in text
    assert "Command: `python bench/robustness.py --seeds 1 --rounds 2" in text


@pytest.mark.skipif(not BYZFL_INSTALLED, reason="ByzFL is a benchmark-only dependency (pip install --no-deps byzfl)")
def test_peer_cell_gets_the_rounds_effective_f(bench, base, monkeypatch):
    seen = []
    make = bench._peer_rule

    def spy(column):
        rule = make(column)

        def counted(vectors, *, f=0, pivot=None, **params):
            seen.append((vectors.shape[0], f))
            return rule(vectors, f=f, pivot=pivot, **params)
        return counted

    monkeypatch.setattr(bench, "_peer_rule", spy)
    for attack, rows, f in (("alie", 10, 3), ("crash", 7, 0)):  # 3 silent workers spend the whole budget
        seen.clear()
        run = bench.run_cell(base, attack, "byzfl+arc+nnm+krum", seed=0, rounds=3)
        assert 0.0 <= run["mean"] <= 1.0 and not run["diverged"]
        assert set(seen[1:]) == {(rows, f)}  # seen[0]: the config's validation call on dummy vectors
    assert "byzfl" in sys.modules and "byzfl.fed_framework" not in sys.modules  # the aggregators only
