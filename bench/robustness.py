"""Robustness benchmark: honest test accuracy under every attack, for D-SGD, robust servers and MoNNA variants.

    python bench/robustness.py [--config examples/robustness.toml] [--seeds 5] [--rounds N]
                               [--split all|honest|both] [--alpha A]
                               [--attacks none,sign_flip,...] [--rules monna,monna+nnm,...]
                               [--jobs 1] [--out bench/results/robustness.md [--append]]
    ostracon bench robustness [same arguments]

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
mixing step capped at the local step).

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
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ostracon.nodes.worker as worker_module  # noqa: E402
from ostracon.aggregator import get_pre_aggregation  # noqa: E402
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
    "monna+mean": {"training.protocol": "monna", "training.rule": "mean", "training.pre": []},
    "monna": {"training.protocol": "monna", "training.rule": "nna", "training.pre": []},
    "monna+nnm": {"training.protocol": "monna", "training.rule": "nna", "training.pre": ["nnm"]},
    "monna+bounded": {"training.protocol": "monna", "training.rule": "bounded_nna", "training.pre": []},
    "monna+nnm+bounded": {"training.protocol": "monna", "training.rule": "bounded_nna", "training.pre": ["nnm"]},
}

SPLITS = ("all", "honest")

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
    """One run in a pool worker, which loads the dataset once per process."""
    global _DATASET
    if _DATASET is None:
        _DATASET = load_config_dataset(base)
    return run_cell(base, attack, rule, seed, rounds, dataset=_DATASET, split=split)


_DATASET = None


def run_benchmark(base: Config, attacks: Sequence[str], rules: Sequence[str], seeds: Sequence[int],
                  rounds: int | None = None, *, jobs: int = 1, log: Callable[[str], None] | None = None,
                  split: str = "all") -> dict:
    """Every cell of ``attacks x rules`` over ``seeds``: ``{(attack, rule): summary}``.

    ``jobs > 1`` spreads the runs over that many processes; the results do not
    depend on it (every run is deterministic), only the wall time does.
    """
    keys = [(a, r) for a in attacks for r in rules]
    runs: dict[tuple[str, str], dict[int, dict]] = {key: {} for key in keys}
    cells: dict[tuple[str, str], dict] = {}

    def record(run: dict) -> None:
        key = (run["attack"], run["rule"])
        runs[key][run["seed"]] = run
        if len(runs[key]) < len(seeds):
            return
        cell = cells[key] = summarise([runs[key][s] for s in seeds])
        if log is not None:
            per_seed = " ".join(f"{a:.3f}" for a in cell["per_seed"])
            log(f"[{len(cells)}/{len(keys)}] {split:<6} {key[0]:<19} {key[1]:<17} mean {cell['mean']:.3f} "
                f"min {cell['min']:.3f} worst-seed min {cell['worst_min']:.3f} (per seed: {per_seed}) "
                f"{cell['wall_s']:.1f}s" + (f", {cell['diverged']} diverged" if cell["diverged"] else ""))

    tasks = [(a, r, s) for a, r in keys for s in seeds]
    if jobs <= 1:
        dataset = load_config_dataset(base)
        for attack, rule, seed in tasks:
            record(run_cell(base, attack, rule, seed, rounds, dataset=dataset, split=split))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # Slowest runs first, so the pool does not end on one long run.
        tasks.sort(key=lambda task: not ATTACKS[task[0]][0].endswith("_optimized"))
        # By its importable name, so the spawned workers can unpickle it however this script was started.
        run = importlib.import_module("bench.robustness")._run
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run, base, *task, rounds, split) for task in tasks]
            for future in as_completed(futures):
                record(future.result())
    return {key: cells[key] for key in keys}


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


def describe_config(base: Config, seeds: Sequence[int], rounds: int | None) -> list[str]:
    t, d, b = base.training, base.data, base.byzantine
    return [
        f"- dataset: `{d.source}` (test fraction {d.test_fraction}), partition `{d.partition}`, alpha = {d.alpha}",
        f"- model: `{base.model.name}` {dict(base.model.params) or ''}".rstrip(),
        f"- workers n = {t.workers}, Byzantine = {b.count} (attack `none`: 0 Byzantine, all {t.workers} honest), "
        f"declared f = {t.f}",
        f"- rounds = {rounds or t.rounds}, lr = {t.lr} ({t.lr_schedule}), momentum = {t.momentum}, "
        f"batch = {t.batch_size}, weight decay = {t.weight_decay}",
        f"- seeds = {', '.join(str(s) for s in seeds)}; backend `{base.backend.name}` "
        f"(deterministic = {base.deterministic}, threads = {base.threads})",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs",
    ]


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
           command: str, title: str = "# Robustness benchmark") -> str:
    """The markdown report: the setting, then per data split the table, the worst cases and the per-seed values."""
    parts = [
        title,
        "",
        f"Command: `{command}`",
        "",
        *describe_config(base, seeds, rounds),
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
            format_table(cells, attacks, rules),
            "",
            "Per seed (mean over honest workers):",
            "",
            format_per_seed(cells, attacks, rules),
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="robustness", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="base config (TOML)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..S-1 (default 5)")
    p.add_argument("--rounds", type=int, default=None, help="override training.rounds")
    p.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated (default: all)")
    p.add_argument("--rules", default=",".join(RULES), help="comma-separated (default: all)")
    p.add_argument("--split", choices=(*SPLITS, "both"), default="both",
                   help="training data over every worker (all), the honest ones only (honest), or both tables")
    p.add_argument("--alpha", type=float, default=None, help="override data.alpha (Dirichlet heterogeneity)")
    p.add_argument("--jobs", type=int, default=1, help="cells run in this many processes (default 1)")
    p.add_argument("--append", action="store_true", help="append the report to --out instead of replacing it")
    p.add_argument("--out", default=None,
                   help=f"also write the markdown report here (e.g. {DEFAULT_OUT.relative_to(ROOT)})")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.rounds is not None and args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.alpha is not None and not args.alpha > 0:
        p.error("--alpha must be > 0")
    args.attacks = _names(args.attacks, ATTACKS, "attack(s)")
    args.rules = _names(args.rules, RULES, "rule(s)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/robustness.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    base = load(args.config)
    if args.alpha is not None:
        base = base.replace(**{"data.alpha": args.alpha})
    seeds = list(range(args.seeds))
    splits = list(SPLITS) if args.split == "both" else [args.split]
    began = time.perf_counter()
    cells_by_split = {
        split: run_benchmark(base, args.attacks, args.rules, seeds, args.rounds, jobs=args.jobs, split=split,
                             log=lambda line: print(line, file=sys.stderr, flush=True))
        for split in splits
    }
    wall_s = time.perf_counter() - began
    title = "## Robustness benchmark: additional run" if args.append else "# Robustness benchmark"
    attacks = [a for a in ATTACKS if a in args.attacks]  # run in the order given, report in the usual order
    text = report(base, cells_by_split, attacks, args.rules, seeds, args.rounds, wall_s, command.strip(), title)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a" if args.append else "w") as fh:
            fh.write(("\n" if args.append else "") + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
