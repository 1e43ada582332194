"""Robustness benchmark: honest test accuracy under every attack, for D-SGD, robust servers and MoNNA variants.

    python bench/robustness.py [--quick | --full] [--config examples/robustness.toml] [--seeds 5]
                               [--rounds N] [--split all|honest|both] [--alpha A[,B...]]
                               [--attacks none,sign_flip,...] [--rules monna,monna+nnm,...]
                               [--jobs 1] [--out bench/results/robustness.md [--append]]
    ostracon bench robustness [same arguments]

Presets (explicit arguments override them; :data:`PRESETS`):

- ``--quick``: 3 seeds, the 8 attacks hardest for the default (``QUICK_ATTACKS``) and ``none``,
  every column (ostracon's and the ByzFL peers), split ``all``.
- ``--full``: 5 seeds, every attack, both splits, the default (``monna+nnm``), ostracon's server
  rule and every ByzFL peer column.
- heterogeneity: ``--alpha 1,0.1`` runs each column at both Dirichlet alphas and reports them side
  by side (columns ``rule @ alpha=A``), e.g. ``--quick --alpha 1,0.1 --rules monna+nnm,byzfl+nnm+trmean``.

Setting (``examples/robustness.toml``): scikit-learn digits, ``mlp``, 10
workers per run of which 3 Byzantine (the last three), Dirichlet(alpha = 1)
heterogeneity (``--alpha 0.1``: the strongly heterogeneous case), declared
``f = 3`` for every robust rule, in-process backend (deterministic). A *cell*
is one (attack, rule) pair trained once per seed (seeds ``0 .. S-1``, 5 by
default: the seed moves the data split, the partition, the initialisation and
every batch). Its value is the honest workers' test accuracy at the end of
training -- the mean over honest workers, averaged over seeds -- reported with
the minimum over honest workers (averaged over seeds) and the worst seed's
minimum. Each rule's *worst case* is the minimum of its cells over the attacks.
A run whose honest models end non-finite is *diverged* and scores 0.

Data split (``--split``): ``all`` spreads the training data over all 10
workers, so the Byzantine ones hold 30 % of it; ``honest`` gives it to the 7
honest workers only (``data.split = "honest"``), the setting of the MoNNA and
bucketing papers' code. ``both`` (default) reports both tables.

Attacks (3 omniscient workers; defaults vs their papers):

- ``sign_flip``: ``-mean(honest)`` (Allen-Zhu et al. 2021, ByzFL's form: the
  flipped *honest mean*, not the attacker's own flipped vector).
- ``alie``: ``mean - z_max std`` with Baruch et al.'s ``z_max(n, f)`` (the paper's).
- ``alie_optimized``: ``mean - tau std``, ``tau`` searched each round in
  ``[0, 10]`` against the real defense (ByzFL's optimal ALIE, one-sided);
  ``alie_optimized_up``: ``sign = +1``, ``mean + tau std``;
  ``alie_optimized_both``: ``sign = 0``, the better side each round.
- ``foe``: ``-eps mean(honest)`` with ``eps = 0.1``, Xie et al.'s small-eps
  setting (ByzFL's default); ``foe_optimized`` searches ``eps`` in
  ``[0.01, 100]``, which covers the paper's large ``eps = 100`` too.
- ``label_flip``: the 3 workers train honestly on labels ``C - 1 - y``.
- ``mimic``: copies honest worker 0, the fixed-target variant of the
  bucketing paper's code; ``mimic_worst``: every fixed target 0..6, the
  worst per seed (the sweep); ``mimic_variant``: the bucketing paper's mimic,
  the honest worker farthest along the top eigenvector of the honest vectors,
  estimated over a 20-round warm-up (10 % of the run), then copied for good.
- ``gaussian``: ``N(0, 200^2 I)`` around 0 (Blanchard et al. / ByzFL), not
  around the honest mean.
- ``crash``: the 3 workers never answer. ``none``: ``byzantine.count = 0``,
  all 10 workers honest (the rules still declare ``f = 3``).

Rules: ``server+mean`` (parameter server, plain mean: D-SGD),
``server+cwtm``, ``server+nnm+cwtm``; decentralised (``monna`` protocol,
momentum on the local step): ``monna+mean`` (D-SGD without a server),
``monna`` (NNA, the paper's MoNNA), ``monna+nnm`` (NNM then NNA, the
default), ``monna+bounded`` / ``monna+nnm+bounded`` (``bounded_nna``: the
mixing step capped at the local step). ``server+arc+nnm+cwtm``: ostracon's
own ARC then NNM then CWTM on the server.

Peer columns (``byzfl+...``, :data:`PEERS`): ByzFL's own aggregator and
pre-aggregator objects (``byzfl.aggregators``: ``NNM``, ``ARC``, ``TrMean``,
``Krum``; ByzFL 0.0.11, the reference library of the field) on ostracon's
server protocol, with the same data, model, attacks, seeds and rounds:
``byzfl+nnm+trmean`` and ``byzfl+nnm+krum`` (NNM, Allouah et al. 2023, before
a robust rule: the pairing ByzFL's docs and benchmark use), and
``byzfl+arc+nnm+trmean`` / ``byzfl+arc+nnm+krum`` (ARC, Allouah et al. 2024,
then NNM, as ByzFL's ``RobustAggregator`` chains pre-aggregators). The
benchmark registers each as a rule (``byzfl_nnm_trmean``, ...) in ostracon's
rule registry for the duration of a peer run only (:func:`peer_rules`), so the
server calls it as it calls any rule -- ``aggregate(vectors, rule, f=f, pre=(),
...)`` with the round's effective ``f`` -- and the omniscient attacks search
against it; each ByzFL object is built with that ``f``. ByzFL is a
benchmark-only dependency, imported lazily and only here: ``pip install
--no-deps byzfl==0.0.11`` (its declared requirements pull torchvision,
matplotlib, seaborn and, through torchvision, a CUDA torch over the CPU one;
the aggregators need only torch, numpy and scipy). ``import byzfl`` runs the
package ``__init__``, which imports its training framework (torchvision), so
the benchmark loads ``byzfl.aggregators`` under an empty parent package
instead (:func:`byzfl_aggregators`).

Speed: the attacks other than ``gaussian`` are deterministic functions of the
honest vectors (and, for ``mimic_variant``, of a state every attacker updates
alike), so every Byzantine worker of a round sends the same vector; the
benchmark's backend (:class:`SharedAttackBackend`) computes it once and gives
it to the three, and pre-aggregates each candidate once per defense call, not
once per honest pivot (:func:`pre_aggregation_once`). Both are bit-identical
to the plain backend, which :func:`check_shared_attack` verifies and the
smoke test runs. This matters for ``*_optimized``, whose line search calls the
real defense ~34 times per round (~68 for ``alie_optimized_both``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import shlex
import sys
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ostracon.nodes.worker as worker_module  # noqa: E402
from ostracon.aggregator import RULES as RULE_REGISTRY  # noqa: E402
from ostracon.aggregator import get_pre_aggregation, register_rule  # noqa: E402
from ostracon.cluster.config import Config, load  # noqa: E402
from ostracon.cluster.execution.backend import LocalBackend, StepResult  # noqa: E402
from ostracon.cluster.execution.plan import load_config_dataset  # noqa: E402
from ostracon.cluster.execution.training import train  # noqa: E402

DEFAULT_CONFIG = ROOT / "examples" / "robustness.toml"
DEFAULT_OUT = ROOT / "bench" / "results" / "robustness.md"

# Attack row -> (byzantine.behaviour, byzantine.params); "none" is byzantine.count = 0 and
# "mimic_worst" is, per seed, the worst of "mimic" over every honest target (a sweep, not one run).
ATTACKS: dict[str, tuple[str, dict]] = {
    "none": ("none", {}),
    "sign_flip": ("sign_flip", {}),
    "alie": ("alie", {}),
    "alie_optimized": ("alie_optimized", {}),  # sign = -1: mean - tau std, tau >= 0 (ByzFL's search)
    "alie_optimized_up": ("alie_optimized", {"sign": 1}),  # mean + tau std
    "alie_optimized_both": ("alie_optimized", {"sign": 0}),  # the better side each round
    "foe": ("foe", {}),
    "foe_optimized": ("foe_optimized", {}),
    "label_flip": ("label_flip", {}),
    "mimic": ("mimic", {}),  # fixed target: honest worker 0
    "mimic_worst": ("mimic", {}),  # every fixed target, the worst one per seed
    "mimic_variant": ("mimic_variant", {}),  # the bucketing paper's: top-eigenvector target after a warm-up
    "gaussian": ("gaussian", {}),
    "crash": ("crash", {}),
}

# Rule column -> config overrides. D-SGD (mean) is the non-robust reference, on a server and decentralised.
RULES: dict[str, dict] = {
    "server+mean": {"training.protocol": "server", "training.rule": "mean", "training.pre": []},
    "server+cwtm": {"training.protocol": "server", "training.rule": "cwtm", "training.pre": []},
    "server+nnm+cwtm": {"training.protocol": "server", "training.rule": "cwtm", "training.pre": ["nnm"]},
    "server+arc+nnm+cwtm": {"training.protocol": "server", "training.rule": "cwtm", "training.pre": ["arc", "nnm"]},
    "monna+mean": {"training.protocol": "monna", "training.rule": "mean", "training.pre": []},
    "monna": {"training.protocol": "monna", "training.rule": "nna", "training.pre": []},
    "monna+nnm": {"training.protocol": "monna", "training.rule": "nna", "training.pre": ["nnm"]},
    "monna+bounded": {"training.protocol": "monna", "training.rule": "bounded_nna", "training.pre": []},
    "monna+nnm+bounded": {"training.protocol": "monna", "training.rule": "bounded_nna", "training.pre": ["nnm"]},
}

# Peer column -> (ByzFL pre-aggregators, applied in order, then ByzFL's aggregator), on the server protocol.
PEERS: dict[str, tuple[tuple[str, ...], str]] = {
    "byzfl+nnm+trmean": (("NNM",), "TrMean"),
    "byzfl+nnm+krum": (("NNM",), "Krum"),
    "byzfl+arc+nnm+trmean": (("ARC", "NNM"), "TrMean"),
    "byzfl+arc+nnm+krum": (("ARC", "NNM"), "Krum"),
}
BYZFL_PACKAGE = "byzfl"
BYZFL_VERSION = "0.0.11"
BYZFL_INSTALL = f"pip install --no-deps {BYZFL_PACKAGE}=={BYZFL_VERSION}"


def peer_rule_name(column: str) -> str:
    """The registry name of a peer column's rule: ``byzfl+nnm+trmean`` -> ``byzfl_nnm_trmean``."""
    return column.replace("+", "_")


for _column in PEERS:
    RULES[_column] = {"training.protocol": "server", "training.rule": peer_rule_name(_column), "training.pre": []}

DEFAULT_RULE = "monna+nnm"  # the shipped configuration (training.pre = ["nnm"], rule = "nna")
SPLITS = ("all", "honest")

# The 8 attacks hardest for the default in bench/results/robustness.md (split all, 5 seeds, by mean:
# alie_optimized_both 0.861, crash 0.881, mimic_worst 0.889, mimic_variant 0.910, alie_optimized_up
# 0.916, alie_optimized 0.918, mimic 0.920, label_flip 0.927), with `mimic` (target 0, one of the
# targets mimic_worst already tries, so it never sets a worst case) replaced by foe_optimized, the
# server rules' worst row in the earlier table; then `none`, the reference the crash row is read against.
QUICK_ATTACKS = ("alie_optimized_both", "crash", "mimic_worst", "mimic_variant", "alie_optimized_up",
                 "alie_optimized", "label_flip", "foe_optimized")
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"seeds": 3, "attacks": ",".join(("none", *QUICK_ATTACKS)), "rules": ",".join(RULES), "split": "all"},
    "full": {"seeds": 5, "attacks": ",".join(ATTACKS), "split": "both",
             "rules": ",".join((DEFAULT_RULE, "server+nnm+cwtm", *PEERS))},
}

# Attacks that ignore their generator: one vector per round, the same for every Byzantine worker.
DETERMINISTIC_ATTACKS = frozenset({"sign_flip", "alie", "alie_optimized", "foe", "foe_optimized", "mimic",
                                   "mimic_variant"})


# ----------------------------------------------------------------------------------------------- backend


class SharedAttackBackend(LocalBackend):
    """The in-process backend, computing a deterministic attack once per round for all attackers.

    Only when every attacker has the same spec up to its index (same attack,
    params, f, rule, ...), which the plan guarantees within a group;
    otherwise each worker computes its own, as in :class:`LocalBackend`.
    """

    name = "local"

    def attack(self, workers, honest, t, budget=None) -> StepResult:
        workers = list(workers)
        specs = [self.workers[j].spec for j in workers]
        same = all(dataclasses.replace(s, index=0) == dataclasses.replace(specs[0], index=0) for s in specs)
        if len(workers) < 2 or not same or specs[0].attack not in DETERMINISTIC_ATTACKS:
            return super().attack(workers, honest, t, budget)
        with pre_aggregation_once():
            vector = self.workers[workers[0]].attack(list(honest), t, budget)
        result = StepResult()
        for j in workers:
            if vector is None:
                result.failures[j] = "no answer"
            else:
                result.vectors[j] = vector.copy()
        return result


@contextlib.contextmanager
def pre_aggregation_once():
    """While an attacker evaluates its defense, pre-aggregate each candidate's rows once, not once per pivot.

    MoNNA's defense (``Worker._defense``) calls ``aggregate(vectors, rule,
    pivot=p, pre=pre)`` for every honest pivot ``p`` on the same ``vectors``;
    a pivot-free pre-aggregation (``nnm``) gives the same rows each time. This
    memoises the last result by tensor identity and version, so the numbers
    are bit-identical (:func:`check_shared_attack`) and ``nnm`` runs ~7x less.
    Randomised steps (bucketing) are never memoised.
    """
    original = worker_module.aggregate
    last: dict = {}

    def aggregate_once(vectors, rule, *, f=0, pivot=None, pre=(), **params):
        steps = [pre] if isinstance(pre, str) else list(pre)
        if not steps or any(not isinstance(step, str) or step == "bucketing" for step in steps):
            return original(vectors, rule, f=f, pivot=pivot, pre=pre, **params)
        key = (id(vectors), vectors._version, f, tuple(steps))
        if last.get("key") != key or last.get("vectors") is not vectors:
            mixed = vectors
            for step in steps:
                mixed = get_pre_aggregation(step)(mixed, f=f)
            last.update(key=key, vectors=vectors, mixed=mixed)
        return original(last["mixed"], rule, f=f, pivot=pivot, **params)

    worker_module.aggregate = aggregate_once
    try:
        yield
    finally:
        worker_module.aggregate = original


# ----------------------------------------------------------------------------------------------- peers


class PeerUnavailable(RuntimeError):
    """A peer (ByzFL) column was asked for and ByzFL's aggregators cannot be loaded."""


_BYZFL: Any = None  # byzfl.aggregators once loaded (per process)


def byzfl_aggregators() -> Any:
    """ByzFL's ``byzfl.aggregators`` module (``NNM``, ``ARC``, ``TrMean``, ``Krum``, ...), loaded once.

    ``import byzfl`` runs the package ``__init__``, which imports ByzFL's
    training framework and benchmark (torchvision, matplotlib, seaborn); the
    aggregators need only torch, numpy and scipy. So unless ``byzfl`` is
    already imported, this puts an empty ``byzfl`` package (the installed
    folder as its path, no ``__init__`` run) in ``sys.modules`` and imports
    ``byzfl.aggregators`` under it. Raises :class:`PeerUnavailable`, naming the
    install command, when ByzFL is missing or another version.
    """
    global _BYZFL
    if _BYZFL is not None:
        return _BYZFL
    name = BYZFL_PACKAGE
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise PeerUnavailable(f"the byzfl+... peer columns run ByzFL's aggregators, and {name} is not installed: "
                              f"{BYZFL_INSTALL} (benchmark-only; --no-deps keeps the CPU torch: its declared "
                              "requirements pull torchvision and a CUDA torch)") from None
    if version != BYZFL_VERSION:
        raise PeerUnavailable(f"the byzfl+... peer columns are pinned to {name} {BYZFL_VERSION}, found {version}: "
                              f"{BYZFL_INSTALL}")
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)  # finds the package without running its __init__
        if spec is None or not spec.submodule_search_locations:
            raise PeerUnavailable(f"{name} {version} is installed but its package folder is missing: {BYZFL_INSTALL}")
        parent = types.ModuleType(name, "ByzFL without its __init__ (bench/robustness.py loads only the aggregators)")
        parent.__path__ = list(spec.submodule_search_locations)
        sys.modules[name] = parent
    _BYZFL = importlib.import_module(f"{name}.aggregators")
    return _BYZFL


def require_peers(rules: Iterable[str]) -> None:
    """Fail early, naming the install command, if a peer column is asked for and ByzFL cannot be loaded."""
    if any(rule in PEERS for rule in rules):
        byzfl_aggregators()


def _peer_rule(column: str) -> Callable[..., torch.Tensor]:
    """The peer column's pipeline as an ostracon rule: ByzFL's pre-aggregators, then its aggregator.

    Called by the server (and by the omniscient attacks' line search) as
    ``rule(vectors, f=f, pivot=None)``; every ByzFL object is built with that
    ``f``, the round's effective ``f``. The rows are copied first: ByzFL's ``ARC``
    clips the rows of its input in place.
    """
    pre_names, aggregator_name = PEERS[column]

    def rule(vectors: torch.Tensor, *, f: int = 0, pivot: torch.Tensor | None = None, **params: Any) -> torch.Tensor:
        if params:
            raise ValueError(f"{peer_rule_name(column)}: unknown parameter(s) {', '.join(map(repr, sorted(params)))}")
        lib = byzfl_aggregators()
        rows = vectors.detach().clone()
        for pre_name in pre_names:
            rows = getattr(lib, pre_name)(f=f)(rows)
        return getattr(lib, aggregator_name)(f=f)(rows).to(vectors.dtype).clone()

    rule.__name__ = rule.__qualname__ = peer_rule_name(column)
    return rule


@contextlib.contextmanager
def peer_rules(rules: Iterable[str]) -> Iterator[None]:
    """Register the peer columns among ``rules`` in ostracon's rule registry while the block runs.

    Benchmark-only: the names are removed again on exit (only those this call
    added), so the registry outside a peer run is the package's own.
    """
    added = []
    for column in dict.fromkeys(rules):
        name = peer_rule_name(column)
        if column in PEERS and name not in RULE_REGISTRY:
            register_rule(name)(_peer_rule(column))
            added.append(name)
    try:
        yield
    finally:
        for name in added:
            RULE_REGISTRY.pop(name, None)


# ----------------------------------------------------------------------------------------------- cells


def cell_config(base: Config, attack: str, rule: str, seed: int, rounds: int | None = None,
                split: str = "all", target: int | None = None) -> Config:
    """The config of one run: ``base`` with the rule's protocol/rule/pre, the attack, the seed and the split.

    ``split = "honest"`` gives all training data to the honest workers (the MoNNA
    and bucketing papers' setting); ``"all"`` spreads it over every worker, the
    Byzantine ones included. ``target`` is mimic's honest target.
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose from: {', '.join(ATTACKS)}")
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose from: {', '.join(RULES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
    overrides: dict = {"seed": seed, "data.split": split, **RULES[rule]}
    if rounds is not None:
        overrides["training.rounds"] = rounds
        overrides["training.eval_every"] = rounds
    behaviour, params = ATTACKS[attack]
    if attack == "none":
        overrides["byzantine.count"] = 0
    else:
        overrides["byzantine.behaviour"] = behaviour
        params = dict(params, **({} if target is None else {"target": target}))
        if params:
            overrides["byzantine.params"] = params
    with peer_rules([rule]):  # a peer column's rule name must be registered for the config to validate
        return base.replace(**overrides)


def run_cell(base: Config, attack: str, rule: str, seed: int, rounds: int | None = None, *,
             dataset=None, shared_attack: bool = True, split: str = "all") -> dict:
    """Train one (attack, rule, seed) run; return the honest workers' final test accuracy and the time.

    ``mimic_worst`` trains one run per honest target and returns the worst (lowest mean accuracy).
    A run whose honest models hold non-finite parameters is "diverged" and scores what evaluation
    gives non-finite logits: 0.
    """
    if attack == "mimic_worst":
        honest = base.training.workers - base.byzantine.count
        runs = [_run_once(base, attack, rule, seed, rounds, dataset, shared_attack, split, target)
                for target in range(honest)]
        worst = min(runs, key=lambda r: (r["mean"], r["target"]))
        return dict(worst, wall_s=sum(r["wall_s"] for r in runs))
    return _run_once(base, attack, rule, seed, rounds, dataset, shared_attack, split, None)


def _run_once(base, attack, rule, seed, rounds, dataset, shared_attack, split, target) -> dict:
    config = cell_config(base, attack, rule, seed, rounds, split, target)
    if dataset is None:
        dataset = load_config_dataset(config)
    began = time.perf_counter()
    backend = SharedAttackBackend() if shared_attack else LocalBackend()
    with peer_rules([rule]):
        result = train(config, backend=backend, progress=False, dataset=dataset)
    acc = result.summary["honest_test_accuracy"]
    diverged = not all(np.isfinite(theta).all() for theta in result.parameters.values())
    mean, low, high = (0.0, 0.0, 0.0) if diverged else (acc["mean"], acc["min"], acc["max"])
    return {"attack": attack, "rule": rule, "seed": seed, "split": split, "target": target, "mean": mean,
            "min": low, "max": high, "diverged": diverged, "wall_s": time.perf_counter() - began,
            "digests": result.summary["worker_digests"]}


def summarise(runs: Sequence[dict]) -> dict:
    """One cell from its per-seed runs: seed-averaged mean and min over honest workers, worst seed's min."""
    if not runs:
        raise ValueError("a cell needs at least one run")
    return {
        "mean": float(np.mean([r["mean"] for r in runs])),
        "min": float(np.mean([r["min"] for r in runs])),
        "worst_min": float(min(r["min"] for r in runs)),
        "per_seed": [r["mean"] for r in runs],
        "diverged": sum(bool(r["diverged"]) for r in runs),
        "wall_s": float(sum(r["wall_s"] for r in runs)),
    }


def _run(base: Config, attack: str, rule: str, seed: int, rounds: int | None, split: str = "all") -> dict:
    """One run in a pool worker, which loads the dataset once per process (per data source)."""
    d = base.data
    key = (d.source, d.path, d.samples, d.features, d.classes, base.seed if d.source == "synthetic" else None)
    if key not in _DATASETS:
        _DATASETS[key] = load_config_dataset(base)
    return run_cell(base, attack, rule, seed, rounds, dataset=_DATASETS[key], split=split)


_DATASETS: dict[tuple, Any] = {}


def run_cost(base: Config, attack: str, rule: str, rounds: int | None = None) -> float:
    """A rough relative cost of one run, to start the longest runs first (the results do not depend on it).

    From 20-round timings on the 2-core machine: ``monna`` runs every honest
    worker's rule (7 NNA calls a round) where the server runs one; the
    ``*_optimized`` attacks evaluate the defense ~34 times a round (~68 for
    ``sign = 0``); ``mimic_worst`` is one run per honest target.
    """
    monna = RULES[rule]["training.protocol"] == "monna"
    behaviour, params = ATTACKS[attack]
    cost = 1.5 if monna else 1.0
    if behaviour.endswith("_optimized"):
        cost = (11.0 if monna else 6.0) * (2 if params.get("sign") == 0 else 1)
    if attack == "mimic_worst":
        cost *= base.training.workers - base.byzantine.count
    return cost * (rounds or base.training.rounds)


def run_benchmark(base: Config, attacks: Sequence[str], rules: Sequence[str], seeds: Sequence[int],
                  rounds: int | None = None, *, jobs: int = 1, log: Callable[[str], None] | None = None,
                  split: str = "all") -> dict:
    """Every cell of ``attacks x rules`` over ``seeds``: ``{(attack, rule): summary}``.

    ``jobs > 1`` spreads the runs over that many processes; the results do not
    depend on it (every run is deterministic), only the wall time does.
    """
    return run_settings([(base, split)], attacks, rules, seeds, rounds, jobs=jobs, log=log)[0]


def run_settings(settings: Sequence[tuple[Config, str]], attacks: Sequence[str], rules: Sequence[str],
                 seeds: Sequence[int], rounds: int | None = None, *, jobs: int = 1,
                 log: Callable[[str], None] | None = None) -> list[dict]:
    """:func:`run_benchmark` for several ``(base config, split)`` settings (splits, alphas) in one pool.

    Returns one ``{(attack, rule): summary}`` per setting, in order. All runs of
    all settings share the ``jobs`` processes, longest first (:func:`run_cost`),
    so the pool does not idle at a setting's end; every run is deterministic.
    """
    require_peers(rules)
    keys = [(a, r) for a in attacks for r in rules]
    runs: list[dict[tuple[str, str], dict[int, dict]]] = [{key: {} for key in keys} for _ in settings]
    cells: list[dict[tuple[str, str], dict]] = [{} for _ in settings]
    total = len(keys) * len(settings)

    def record(index: int, run: dict) -> None:
        key = (run["attack"], run["rule"])
        runs[index][key][run["seed"]] = run
        if len(runs[index][key]) < len(seeds):
            return
        cell = cells[index][key] = summarise([runs[index][key][s] for s in seeds])
        if log is not None:
            done = sum(len(c) for c in cells)
            base, split = settings[index]
            alpha = f" alpha {base.data.alpha:g}" if len(settings) > 1 else ""
            per_seed = " ".join(f"{a:.3f}" for a in cell["per_seed"])
            log(f"[{done}/{total}] {split:<6}{alpha} {key[0]:<19} {key[1]:<20} mean {cell['mean']:.3f} "
                f"min {cell['min']:.3f} worst-seed min {cell['worst_min']:.3f} (per seed: {per_seed}) "
                f"{cell['wall_s']:.1f}s" + (f", {cell['diverged']} diverged" if cell["diverged"] else ""))

    tasks = [(i, a, r, s) for i in range(len(settings)) for a, r in keys for s in seeds]
    if jobs <= 1:
        for index, attack, rule, seed in tasks:
            record(index, _run(settings[index][0], attack, rule, seed, rounds, settings[index][1]))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # Longest runs first (LPT), so the pool does not end on one long run.
        tasks.sort(key=lambda task: -run_cost(settings[task[0]][0], task[1], task[2], rounds))
        # By its importable name, so the spawned workers can unpickle it however this script was started.
        run = importlib.import_module("bench.robustness")._run
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run, settings[i][0], a, r, s, rounds, settings[i][1]): i for i, a, r, s in tasks}
            for future in as_completed(futures):
                record(futures[future], future.result())
    return [{key: c[key] for key in keys} for c in cells]


def worst_cases(cells: Mapping[tuple[str, str], dict], attacks: Sequence[str], rules: Sequence[str]) -> dict:
    """Per rule: the lowest cell over ``attacks`` (by seed-averaged mean), and the lowest min / worst-seed min."""
    out = {}
    for rule in rules:
        row = [(cells[(a, rule)], a) for a in attacks]
        worst, attack = min(row, key=lambda ca: ca[0]["mean"])
        out[rule] = {"mean": worst["mean"], "attack": attack,
                     "min": min(c["min"] for c, _ in row), "worst_min": min(c["worst_min"] for c, _ in row)}
    return out


# ----------------------------------------------------------------------------------------------- report


def describe_config(base: Config, seeds: Sequence[int], rounds: int | None, rules: Sequence[str] = (),
                    alphas: Sequence[float] = ()) -> list[str]:
    t, d, b = base.training, base.data, base.byzantine
    alpha = (f"alpha = {', '.join(f'{a:g}' for a in alphas)} (one column per rule and alpha)" if len(alphas) > 1
             else f"alpha = {d.alpha}")
    peers = [r for r in rules if r in PEERS]
    return [
        f"- dataset: `{d.source}` (test fraction {d.test_fraction}), partition `{d.partition}`, {alpha}",
        f"- model: `{base.model.name}` {dict(base.model.params) or ''}".rstrip(),
        f"- workers n = {t.workers}, Byzantine = {b.count} (attack `none`: 0 Byzantine, all {t.workers} honest), "
        f"declared f = {t.f}",
        f"- rounds = {rounds or t.rounds}, lr = {t.lr} ({t.lr_schedule}), momentum = {t.momentum}, "
        f"batch = {t.batch_size}, weight decay = {t.weight_decay}",
        f"- seeds = {', '.join(str(s) for s in seeds)}; backend `{base.backend.name}` "
        f"(deterministic = {base.deterministic}, threads = {base.threads})",
        f"- columns: {', '.join(f'`{r}`' for r in rules)}" if rules else "",
        *([f"- peers: ByzFL {_byzfl_version()} (`byzfl.aggregators`), on ostracon's `server` protocol: "
           + "; ".join(f"`{r}` = {' -> '.join((*PEERS[r][0], PEERS[r][1]))}(f = the round's effective f)"
                       for r in peers)] if peers else []),
        f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs",
    ]


def _byzfl_version() -> str:
    try:
        return importlib.metadata.version(BYZFL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def format_table(cells: Mapping[tuple[str, str], dict], attacks: Sequence[str], rules: Sequence[str]) -> str:
    """Markdown: one row per attack, one column per rule, then each rule's worst case over the attacks."""
    lines = ["| attack | " + " | ".join(rules) + " |", "|---|" + "---|" * len(rules)]
    for attack in attacks:
        row = [_cell_text(cells[(attack, r)]) for r in rules]
        lines.append(f"| {attack} | " + " | ".join(row) + " |")
    worst = worst_cases(cells, attacks, rules)
    row = [f"**{w['mean']:.3f}** ({w['attack']}); min {w['min']:.3f} / {w['worst_min']:.3f}"
           for w in (worst[r] for r in rules)]
    lines.append("| **worst case** | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _cell_text(cell: dict) -> str:
    mark = f" ({cell['diverged']} diverged)" if cell["diverged"] else ""
    return f"{cell['mean']:.3f} / {cell['min']:.3f} / {cell['worst_min']:.3f}{mark}"


def format_per_seed(cells: Mapping[tuple[str, str], dict], attacks: Sequence[str], rules: Sequence[str]) -> str:
    """Markdown: each cell's per-seed value (mean over honest workers), seed 0 first."""
    lines = ["| attack | " + " | ".join(rules) + " |", "|---|" + "---|" * len(rules)]
    for attack in attacks:
        row = [" ".join(f"{a:.3f}" for a in cells[(attack, r)]["per_seed"]) for r in rules]
        lines.append(f"| {attack} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def report(base: Config, cells_by_split: Mapping[str, Mapping], attacks, rules, seeds, rounds, wall_s: float,
           command: str, title: str = "# Robustness benchmark", *, alphas: Sequence[float] = (),
           columns: Sequence[str] | None = None) -> str:
    """The markdown report: the setting, then per data split the table, the worst cases and the per-seed values.

    ``columns`` are the tables' column labels (``rule @ alpha=A`` with several
    ``alphas``; by default ``rules``).
    """
    columns = list(rules if columns is None else columns)
    parts = [
        title,
        "",
        f"Command: `{command}`",
        "",
        *[line for line in describe_config(base, seeds, rounds, rules, alphas) if line],
        f"- total wall time: {wall_s:.1f} s",
        "",
        "Cell: honest test accuracy after the last round, `mean / min / worst-seed min`: the mean over "
        "honest workers and the min over honest workers, each averaged over seeds, then the lowest "
        "per-seed min. Worst case: the lowest cell mean over the attacks (which attack), then the "
        "lowest averaged min / worst-seed min over the attacks. \"diverged\": runs whose honest models "
        "hold non-finite parameters, scored 0. Attack rows are described in the module docstring.",
    ]
    for split, cells in cells_by_split.items():
        where = "every worker, Byzantine ones included" if split == "all" else "the honest workers only"
        parts += [
            "",
            f"### data split `{split}`: training data over {where}",
            "",
            format_table(cells, attacks, columns),
            "",
            "Per seed (mean over honest workers):",
            "",
            format_per_seed(cells, attacks, columns),
        ]
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------- checks


def check_shared_attack(base: Config, attack: str, rule: str, seed: int = 0, rounds: int = 5) -> bool:
    """Whether the shared-attack backend gives bit-identical models to the plain local backend."""
    a = run_cell(base, attack, rule, seed, rounds, shared_attack=True)
    b = run_cell(base, attack, rule, seed, rounds, shared_attack=False)
    return a["digests"] == b["digests"]


# ----------------------------------------------------------------------------------------------- CLI


def _names(text: str, allowed: Iterable[str], what: str) -> list[str]:
    allowed = list(allowed)
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in names if x not in allowed]
    if unknown or not names:
        raise SystemExit(f"robustness: unknown {what} {', '.join(unknown) or '(none given)'}; "
                         f"choose from: {', '.join(allowed)}")
    return names


DEFAULTS: dict[str, Any] = {"seeds": 5, "attacks": ",".join(ATTACKS), "rules": ",".join(RULES), "split": "both"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="robustness", description=__doc__.split("\n")[0])
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_const", const="quick", dest="preset",
                        help=f"preset: {PRESETS['quick']['seeds']} seeds, none + the 8 hardest attacks, every "
                             "column, split all (explicit arguments override it)")
    preset.add_argument("--full", action="store_const", const="full", dest="preset",
                        help=f"preset: {PRESETS['full']['seeds']} seeds, every attack, both splits, the default, "
                             "server+nnm+cwtm and every ByzFL peer (explicit arguments override it)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="base config (TOML)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..S-1 (default 5)")
    p.add_argument("--rounds", type=int, default=None, help="override training.rounds")
    p.add_argument("--attacks", default=None, help="comma-separated (default: all)")
    p.add_argument("--rules", default=None, help="comma-separated columns (default: all, the ByzFL peers included)")
    p.add_argument("--split", choices=(*SPLITS, "both"), default=None,
                   help="training data over every worker (all), the honest ones only (honest), or both tables")
    p.add_argument("--alpha", default=None,
                   help="override data.alpha (Dirichlet heterogeneity); several, comma-separated (e.g. 1,0.1), "
                        "give one column per rule and alpha, side by side")
    p.add_argument("--jobs", type=int, default=1, help="cells run in this many processes (default 1)")
    p.add_argument("--append", action="store_true", help="append the report to --out instead of replacing it")
    p.add_argument("--out", default=None,
                   help=f"also write the markdown report here (e.g. {DEFAULT_OUT.relative_to(ROOT)})")
    args = p.parse_args(argv)
    for key, value in {**DEFAULTS, **PRESETS.get(args.preset or "", {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.rounds is not None and args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.alpha is not None:
        try:
            args.alpha = [float(a) for a in args.alpha.split(",") if a.strip()]
        except ValueError:
            p.error(f"--alpha must be numbers, comma-separated, got {args.alpha!r}")
        if not args.alpha or not all(a > 0 for a in args.alpha) or len(set(args.alpha)) < len(args.alpha):
            p.error("--alpha must be distinct numbers > 0")
    args.attacks = _names(args.attacks, ATTACKS, "attack(s)")
    args.rules = _names(args.rules, RULES, "rule(s)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/robustness.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    try:
        require_peers(args.rules)
    except PeerUnavailable as exc:
        ours = ",".join(r for r in args.rules if r not in PEERS)
        raise SystemExit(f"robustness: {exc}" + (f"; or leave the peers out: --rules {ours}" if ours else "")) from None
    base = load(args.config)
    alphas: list[float] = args.alpha or []
    bases = [base.replace(**{"data.alpha": a}) for a in alphas] or [base]
    seeds = list(range(args.seeds))
    splits = list(SPLITS) if args.split == "both" else [args.split]
    settings = [(b, split) for split in splits for b in bases]
    began = time.perf_counter()
    results = run_settings(settings, args.attacks, args.rules, seeds, args.rounds, jobs=args.jobs,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    wall_s = time.perf_counter() - began
    columns = [f"{r} @ alpha={b.data.alpha:g}" for r in args.rules for b in bases] if len(bases) > 1 else args.rules
    cells_by_split: dict[str, dict] = {split: {} for split in splits}
    for (b, split), cells in zip(settings, results, strict=True):
        for (attack, rule), cell in cells.items():
            column = f"{rule} @ alpha={b.data.alpha:g}" if len(bases) > 1 else rule
            cells_by_split[split][(attack, column)] = cell
    title = "## Robustness benchmark: additional run" if args.append else "# Robustness benchmark"
    attacks = [a for a in ATTACKS if a in args.attacks]  # run in the order given, report in the usual order
    text = report(bases[0], cells_by_split, attacks, args.rules, seeds, args.rounds, wall_s, command.strip(), title,
                  alphas=alphas, columns=columns)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a" if args.append else "w") as fh:
            fh.write(("\n" if args.append else "") + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
