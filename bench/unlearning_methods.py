"""Approximate unlearning: the seven methods against exact replay, on one robust group.

    python bench/unlearning_methods.py [--seeds 0,1,2] [--search-seed 100] [--rounds 200] [--quick]
                                       [--scenarios random,class,corrective] [--out bench/results/unlearning_methods.md]
    ostracon bench unlearning_methods [same arguments]

Setting: scikit-learn digits, ``mlp`` (default params), iid placement, ONE group
(``unlearning.groups = 1``) of 5 MoNNA workers (rule ``nna`` after ``nnm``),
declared ``f = 1``, 4 slices per worker, 200 rounds, lr 0.5 (as
``cluster/demo.toml``), local backend. The last worker is Byzantine and runs
``alie`` ("a little is enough", Baruch et al. 2019): a real attack that crafts
its vector from the honest ones' mean and spread so that it hides inside
them, rather than a crude outlier a robust rule drops at once. It is an
*attacker*, not a faulty trainer: it computes no gradient, so the approximate
update (like training) runs on the 4 honest workers; the rows placed on it are
never trained on and need no update (they stay in the forget set all the same).

Scenarios (forget sets drawn with ``numpy.random.default_rng([seed, scenario])``):

- ``random``: 10% of the training ids, uniformly without replacement;
- ``class``: every training id of class 3;
- ``corrective``: before training, 20% of the rows of ONE honest worker (the
  last honest one) get flipped labels ``y -> 9 - y`` (the repository's
  ``label_flip`` mapping); the data are an ``npz`` file (``data.source = "npz"``)
  with the digits ids, so placement and the held-out split are unchanged (checked).
  Only a quarter of the poisoned rows are flagged for deletion. The test split
  is clean: TA is the clean test accuracy, reported before unlearning, after
  each method and after exact replay.

For each scenario and seed the benchmark trains once into a state directory,
copies it (``shutil.copytree``) once per method so every method starts from the
same trained state, and runs ``unlearn_state_dir(copy, ids, mode="approximate",
method=m, overrides=...)`` with **the gate disabled** (``unlearning.gate.*`` =
1: the approximate model is always published and measured, never rolled back),
and ``mode="exact"`` on another copy (SISA replay; bit-identical to retraining
without the ids). The model compared is the group's *served* model (its first
honest worker, ``training.served_worker``) read from the published version
(``exact.final_thetas``); under MoNNA the honest models agree closely. Metrics
(``cluster/unlearning/evaluation.py``, SalUn's protocol) against the exact model
of the same seed: UA (forget-set error), RA (accuracy on the group's retained
rows), TA (held-out test accuracy), MIA-efficacy, Avg. Gap (mean |difference|
over the four, points), KL(exact || method) on the forget and the test set.
Cost: the certificate's ``wall_time_s`` and ``gradient_evaluations`` (ratio to
the exact replay's of the same seed).

Hyperparameters: per method, a small grid (``GRIDS``: lr x steps, alpha x lam for
SSD; other parameters at their defaults) run on ``--search-seed`` (not a
reported seed), separately per scenario. Criterion, the same in every scenario:
the smallest Avg. Gap to exact among the grid points whose gradient
evaluations are <= 10% of that scenario's exact replay (if none qualifies, the
cheapest point). The chosen values are printed with the tables.
``--quick``: one seed, a 2-point grid per method (a smoke run).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ostracon.cluster.config import Config, from_dict  # noqa: E402
from ostracon.cluster.execution.plan import load_config_dataset, make_plan  # noqa: E402
from ostracon.cluster.execution.training import served_worker, train  # noqa: E402
from ostracon.cluster.unlearning import unlearn_state_dir  # noqa: E402
from ostracon.cluster.unlearning.evaluation import compare_to_exact  # noqa: E402
from ostracon.cluster.unlearning.gate import retained_rows, rows_of  # noqa: E402
from ostracon.cluster.unlearning.trained import final_thetas, open_state  # noqa: E402
from ostracon.nodes.approximate_params import PARAMS  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "unlearning_methods.md"
METHODS = ("ft", "ga", "npo", "rl", "l1_sparse", "salun", "ssd")
SCENARIOS = ("random", "class", "corrective")
TITLES = {"random": "(a) 10% random forgetting", "class": "(b) one whole class (class 3)",
          "corrective": "(c) corrective: 20% of one honest worker's labels flipped, a quarter of them deleted"}
FORGET_FRACTION = 0.10
FORGET_CLASS = 3
POISON_FRACTION = 0.20
FLAGGED_FRACTION = 0.25
BUDGET = 0.10  # gradient evaluations, relative to the scenario's exact replay
GAP_TARGET = 2.0  # acceptance: best Avg. Gap in (a), points
# The gate, disabled: every threshold at 1 (a fraction), so no update is ever rolled back.
NO_GATE = {"unlearning.gate.max_test_drop": 1.0, "unlearning.gate.max_retain_drop": 1.0,
           "unlearning.gate.max_forget_gap": 1.0}


def _grid(**axes) -> list[dict]:
    (a, xs), (b, ys) = axes.items()
    return [{a: x, b: y} for x in xs for y in ys]


GRIDS = {
    "ft": _grid(lr=(0.01, 0.05, 0.1), steps=(10, 20)),
    "ga": _grid(lr=(0.001, 0.003, 0.01), steps=(5, 10)),
    "npo": _grid(lr=(0.01, 0.05, 0.1), steps=(5, 10)),
    "rl": _grid(lr=(0.005, 0.02, 0.05), steps=(5, 10)),
    "l1_sparse": _grid(lr=(0.01, 0.05, 0.1), steps=(10, 20)),
    "salun": _grid(lr=(0.005, 0.02, 0.05), steps=(5, 10)),
    "ssd": _grid(alpha=(10.0, 100.0, 1000.0), lam=(0.1, 1.0)),
}
QUICK_GRIDS = {
    "ft": _grid(lr=(0.01, 0.05), steps=(10,)),
    "ga": _grid(lr=(0.001, 0.01), steps=(5,)),
    "npo": _grid(lr=(0.01, 0.05), steps=(5,)),
    "rl": _grid(lr=(0.005, 0.05), steps=(5,)),
    "l1_sparse": _grid(lr=(0.01, 0.05), steps=(10,)),
    "salun": _grid(lr=(0.005, 0.05), steps=(5,)),
    "ssd": _grid(alpha=(10.0, 100.0), lam=(1.0,)),
}


# ----------------------------------------------------------------------------------------------- setting


def base_config(seed: int, rounds: int, workers: int = 5, slices: int = 4, attack: str = "alie") -> Config:
    return from_dict({
        "seed": seed,
        "data": {"source": "digits", "partition": "iid"},
        "model": {"name": "mlp"},
        "training": {"protocol": "monna", "rule": "nna", "workers": workers, "f": 1, "rounds": rounds,
                     "lr": 0.5, "eval_every": rounds},
        "byzantine": {"count": 1, "behaviour": attack},
        "unlearning": {"groups": 1, "slices": slices},
        "backend": {"name": "local"},
    })


def scenario(name: str, config: Config, seed: int, workdir: str) -> tuple[Config, list[str], dict]:
    """The config to train (corrective: on poisoned data) and the ids to forget."""
    plan = make_plan(config)
    train_ids = sorted(plan.placement)
    rng = np.random.default_rng([seed, SCENARIOS.index(name)])
    info: dict = {}
    if name == "random":
        k = int(round(FORGET_FRACTION * len(train_ids)))
        ids = [train_ids[i] for i in np.sort(rng.choice(len(train_ids), k, replace=False))]
    elif name == "class":
        source = load_config_dataset(config)
        label = dict(zip(source.ids.tolist(), source.labels.tolist(), strict=True))
        ids = [i for i in train_ids if label[i] == FORGET_CLASS]
    else:
        source = load_config_dataset(config)
        worker = plan.honest(0)[-1]
        rows = sorted(i for i, (_, j, _) in plan.placement.items() if j == worker)
        poisoned = [rows[i] for i in np.sort(rng.choice(len(rows), int(round(POISON_FRACTION * len(rows))),
                                                        replace=False))]
        flagged = [poisoned[i] for i in np.sort(rng.choice(len(poisoned), int(round(FLAGGED_FRACTION * len(poisoned))),
                                                           replace=False))]
        index = {sid: k for k, sid in enumerate(source.ids.tolist())}
        labels = source.labels.copy()
        at = np.asarray([index[i] for i in poisoned])
        labels[at] = source.num_classes - 1 - labels[at]
        path = os.path.join(workdir, f"poisoned-{seed}.npz")
        np.savez(path, X=source.features, y=labels, ids=source.ids)
        config = config.replace(**{"data.source": "npz", "data.path": path})
        if make_plan(config).placement != plan.placement:
            raise RuntimeError("corrective scenario: the npz dataset changed the placement")
        ids = flagged
        info = {"poisoned_worker": worker, "worker_rows": len(rows), "poisoned": len(poisoned)}
    return config, ids, info


# ----------------------------------------------------------------------------------------------- runs


def served_theta(state_dir: str) -> tuple[object, np.ndarray]:
    st = open_state(state_dir, readonly=True)
    try:
        _, record = st.ledger.latest_version()
        j = served_worker(st.plan, 0)
        return st.plan.specs[j], final_thetas(st, record)[j]
    finally:
        st.close()


def overrides_for(method: str, params: dict) -> dict:
    return {**NO_GATE, **{f"unlearning.{method}.{k}": v for k, v in params.items()}}


class Cell:
    """One trained state (a scenario and seed): exact replay once, then any number of methods."""

    def __init__(self, config: Config, ids: list[str], info: dict, workdir: str, log: Callable[[str], None]):
        self.config, self.ids, self.info, self.workdir, self.log = config, ids, info, workdir, log
        self.trained = os.path.join(workdir, "trained")
        t0 = time.perf_counter()
        summary = train(config, self.trained, progress=False).summary
        self.train_s = time.perf_counter() - t0
        self.train_evals = int(summary["gradient_evaluations"])
        self.copies = 0
        exact_dir = self._copy()
        cert = unlearn_state_dir(exact_dir, ids, mode="exact")
        if cert["status"] != "deleted":
            raise RuntimeError(f"exact deletion did not happen: {cert['status']}")
        self.exact_cost = {"wall_s": float(cert["wall_time_s"]), "evals": int(cert["gradient_evaluations"])}
        self.spec, self.theta_exact = served_theta(exact_dir)
        st = open_state(exact_dir, readonly=True)
        try:  # the forget rows (source labels: poisoned ones in the corrective scenario), retained rows, test split
            self.forget = rows_of(st, ids)
            self.retain = retained_rows(st, 0, ids)
            self.test = (st.plan.test_features, st.plan.test_labels)
        finally:
            st.close()
        shutil.rmtree(exact_dir)
        self.exact = self.compare(self.theta_exact)
        _, theta_before = served_theta(self.trained)
        self.before = self.compare(theta_before)
        log(f"  trained in {self.train_s:.1f}s (TA {self.before['approx']['TA']:.4f}); exact replay "
            f"{self.exact_cost['wall_s']:.1f}s, {self.exact_cost['evals']} gradient evaluations; "
            f"{len(ids)} ids to forget")

    def _copy(self) -> str:
        self.copies += 1
        path = os.path.join(self.workdir, f"copy-{self.copies}")
        shutil.copytree(self.trained, path)
        return path

    def compare(self, theta: np.ndarray) -> dict:
        return compare_to_exact(self.spec, theta, self.theta_exact, self.forget, self.retain, self.test,
                                seed=self.config.seed)

    def run(self, method: str, params: dict) -> dict:
        path = self._copy()
        try:
            cert = unlearn_state_dir(path, self.ids, mode="approximate", method=method,
                                     overrides=overrides_for(method, params))
            if cert["status"] != "deleted" or cert["mode"] != "approximate":
                raise RuntimeError(f"{method}: the approximate update was not published ({cert.get('status')})")
            _, theta = served_theta(path)
        finally:
            shutil.rmtree(path, ignore_errors=True)
        out = self.compare(theta)
        out.update(wall_s=float(cert["wall_time_s"]), evals=int(cert["gradient_evaluations"]),
                   params=dict(cert["params"]))
        return out


def search(name: str, seed: int, rounds: int, grids: dict, workdir: str, log) -> dict:
    """Per method: the grid point with the smallest Avg. Gap within the budget (else the cheapest)."""
    config, ids, info = scenario(name, base_config(seed, rounds), seed, workdir)
    log(f"[search {name}, seed {seed}]")
    cell = Cell(config, ids, info, workdir, log)
    budget = BUDGET * cell.exact_cost["evals"]
    chosen = {}
    for method in METHODS:
        points = []
        for params in grids[method]:
            r = cell.run(method, params)
            points.append((params, r))
            log(f"  {method} {params}: Avg. Gap {r['avg_gap']:.2f}, {r['evals']} evals "
                f"({r['evals'] / cell.exact_cost['evals']:.3f} of exact)")
        feasible = [(p, r) for p, r in points if r["evals"] <= budget and np.isfinite(r["avg_gap"])]
        if feasible:
            best = min(feasible, key=lambda pr: pr[1]["avg_gap"])
        else:
            best = min(points, key=lambda pr: pr[1]["evals"])
        chosen[method] = {"params": best[0], "avg_gap": best[1]["avg_gap"], "evals": best[1]["evals"],
                          "within_budget": bool(feasible), "points": len(points)}
        log(f"  -> {method}: {best[0]}")
    return chosen


def measure(name: str, seed: int, rounds: int, chosen: dict, workdir: str, log) -> dict:
    config, ids, info = scenario(name, base_config(seed, rounds), seed, workdir)
    log(f"[{name}, seed {seed}]")
    cell = Cell(config, ids, info, workdir, log)
    rows = {"before": {**cell.before, "wall_s": 0.0, "evals": 0},
            "exact": {**cell.exact, "wall_s": cell.exact_cost["wall_s"], "evals": cell.exact_cost["evals"]}}
    for method in METHODS:
        rows[method] = cell.run(method, chosen[method]["params"])
        r = rows[method]
        log(f"  {method}: Avg. Gap {r['avg_gap']:.2f}, TA {r['approx']['TA']:.4f}, {r['evals']} evals, "
            f"{r['wall_s']:.2f}s")
    return {"rows": rows, "exact_evals": cell.exact_cost["evals"], "train_evals": cell.train_evals,
            "train_s": cell.train_s, "forget": len(ids), "info": info}


# ----------------------------------------------------------------------------------------------- report


def _ms(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    v = np.asarray(values, dtype=float) * scale
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def _params_text(params: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in params.items()) or "—"


LABELS = {"before": "no unlearning (trained model)", "exact": "exact replay (retrain)"}


def format_table(name: str, runs: Sequence[dict], chosen: dict) -> str:
    corrective = name == "corrective"
    head = ["method", "hyperparameters", "UA (%)", "RA (%)", "TA (%)", "MIA (%)", "Avg. Gap (pts)",
            "KL forget", "KL test", "wall (s)", "gradient evals", "/ exact"]
    if corrective:
        head[5:5] = ["TA − before (pts)", "TA − exact (pts)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in ("before", "exact", *METHODS):
        rs = [run["rows"][key] for run in runs]
        a = [r["approx"] for r in rs]
        ratio = [r["evals"] / run["exact_evals"] for r, run in zip(rs, runs, strict=True)]
        cells = [LABELS.get(key, f"`{key}`"), _params_text(chosen[key]["params"]) if key in chosen else "—",
                 _ms([m["UA"] for m in a], 100), _ms([m["RA"] for m in a], 100), _ms([m["TA"] for m in a], 100),
                 _ms([m["MIA"] for m in a], 100), _ms([r["avg_gap"] for r in rs]),
                 _ms([r["kl_forget"] for r in rs], digits=3), _ms([r["kl_test"] for r in rs], digits=3),
                 "—" if key == "before" else _ms([r["wall_s"] for r in rs]),
                 "0" if key == "before" else _ms([r["evals"] for r in rs], digits=0),
                 "—" if key == "before" else _ms(ratio, digits=3)]
        if corrective:
            before = [run["rows"]["before"]["approx"]["TA"] for run in runs]
            exact = [run["rows"]["exact"]["approx"]["TA"] for run in runs]
            ta = [m["TA"] for m in a]
            cells[5:5] = [_ms(np.subtract(ta, before), 100), _ms(np.subtract(ta, exact), 100)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_method(runs: Sequence[dict]) -> tuple[str, float, float] | None:
    """The method with the smallest mean Avg. Gap among those within the budget (mean evals / exact)."""
    best = None
    for m in METHODS:
        gap = float(np.mean([run["rows"][m]["avg_gap"] for run in runs]))
        ratio = float(np.mean([run["rows"][m]["evals"] / run["exact_evals"] for run in runs]))
        if ratio <= BUDGET and np.isfinite(gap) and (best is None or gap < best[1]):
            best = (m, gap, ratio)
    return best


def describe(seeds, search_seed, rounds, quick, grids) -> list[str]:
    c = base_config(seeds[0], rounds)
    t = c.training
    defaults = {m: dict(dataclasses.asdict(PARAMS[m]())) for m in METHODS}
    return [
        f"- dataset: `digits` (test fraction {c.data.test_fraction}), partition `{c.data.partition}`; model "
        f"`{c.model.name}` (default params)",
        f"- one group (`unlearning.groups = 1`) of {t.workers} workers, protocol `{t.protocol}`, rule `{t.rule}` "
        f"after {list(t.pre)}, declared f = {t.f}; 1 Byzantine worker running `{c.byzantine.behaviour}` "
        "(an attacker: computes no gradient)",
        f"- `unlearning.slices = {c.unlearning.slices}`, {rounds} rounds, lr = {t.lr}, momentum {t.momentum}, "
        f"batch {t.batch_size}; backend `local`, deterministic, 1 thread",
        f"- reported seeds: {', '.join(map(str, seeds))} (mean ± sample std over seeds); hyperparameter search on "
        f"seed {search_seed}{' (quick grid)' if quick else ''}",
        "- search grids (other parameters at their defaults): "
        + "; ".join(f"`{m}` " + ", ".join(_axis(grids[m], k) for k in grids[m][0]) for m in METHODS),
        "- defaults (`nodes/approximate_params.py`): "
        + "; ".join(f"`{m}` " + ", ".join(f"{k} {v:g}" for k, v in defaults[m].items()) for m in METHODS),
        f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs",
    ]


def _axis(points: list[dict], key: str) -> str:
    values = sorted({p[key] for p in points})
    return f"{key} ∈ {{" + ", ".join(f"{v:g}" for v in values) + "}"


def report(results: dict, chosen: dict, seeds, search_seed, rounds, quick, grids, wall_s, command) -> str:
    parts = [
        "# Approximate unlearning: seven methods vs exact replay",
        "",
        f"Command: `{command}`",
        "",
        *describe(seeds, search_seed, rounds, quick, grids),
        f"- total wall time: {wall_s:.0f} s",
        "",
        "Every approximate method runs with **the gate disabled** (`unlearning.gate.max_test_drop = "
        "max_retain_drop = max_forget_gap = 1`), so its model is published and measured, never rolled back. "
        "Each method and the exact replay start from a copy of the same trained state. The model measured "
        "is the group's served model (its first honest worker). UA = forget-set error, RA = accuracy on "
        "the group's retained rows, TA = held-out test accuracy, MIA = MIA-efficacy (fraction of the "
        "forget set a confidence SVC attack calls non-member); Avg. Gap = mean |difference| to the exact "
        "model of the same seed over UA, RA, TA, MIA (points); KL = KL(exact ‖ method) on the forget and "
        "test sets; wall time and gradient evaluations from the certificate, `/ exact` = ratio to the "
        "exact replay's gradient evaluations. Hyperparameters: per scenario, the grid point with the "
        f"smallest Avg. Gap on the search seed among those spending <= {BUDGET:.0%} of that scenario's "
        "exact replay's gradient evaluations.",
        "",
    ]
    for name in results:
        runs = results[name]
        extra = ""
        if name == "corrective":
            info = runs[0]["info"]
            extra = (f" Poisoned worker {info['poisoned_worker']}: {info['poisoned']} of its {info['worker_rows']} "
                     f"rows relabelled `y -> 9 - y`; {runs[0]['forget']} flagged for deletion. TA is the clean "
                     "test accuracy; `TA − before` is what the unlearning recovered (the trained, poisoned model "
                     "is `before`).")
        parts += [f"## {TITLES[name]}", "",
                  f"{runs[0]['forget']} ids to forget (seed {seeds[0]}); exact replay "
                  f"{_ms([r['exact_evals'] for r in runs], digits=0)} gradient evaluations "
                  f"(full training {runs[0]['train_evals']}).{extra}", "",
                  format_table(name, runs, chosen[name]), ""]
    parts += ["## Acceptance", ""]
    if "random" in results:
        best = best_method(results["random"])
        if best is None:
            parts.append(f"- (a): no method within {BUDGET:.0%} of the exact replay's gradient evaluations: **FAIL**")
        else:
            m, gap, ratio = best
            ok = gap <= GAP_TARGET
            parts.append(f"- (a): best method within {BUDGET:.0%} of the exact replay's gradient evaluations: "
                         f"`{m}`, Avg. Gap {gap:.2f} points (target <= {GAP_TARGET}) at {ratio:.3f} of exact's "
                         f"gradient evaluations: **{'pass' if ok else 'FAIL'}**")
    if "corrective" in results:
        runs = results["corrective"]
        before = np.mean([r["rows"]["before"]["approx"]["TA"] for r in runs])
        exact = np.mean([r["rows"]["exact"]["approx"]["TA"] for r in runs])
        got = ", ".join(f"`{m}` {100 * np.mean([r['rows'][m]['approx']['TA'] for r in runs]):.2f}" for m in METHODS)
        parts.append(f"- (c): clean TA before {100 * before:.2f}%, exact replay {100 * exact:.2f}%; after each "
                     f"method: {got} (%)")
    parts += ["", f"Search (seed {search_seed}): chosen point per scenario and method (Avg. Gap on the search seed, "
              "gradient evaluations; * = no grid point within the budget, the cheapest taken):", ""]
    for name in chosen:
        items = "; ".join(f"`{m}` {_params_text(c['params'])} ({c['avg_gap']:.2f}, {c['evals']}"
                          f"{'' if c['within_budget'] else '*'})" for m, c in chosen[name].items())
        parts.append(f"- {TITLES[name].split(':')[0]}: {items}")
    parts.append("")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="unlearning_methods", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default=None, help="reported seeds, comma-separated (default 0,1,2; --quick: 0)")
    p.add_argument("--search-seed", type=int, default=100, help="seed of the hyperparameter search (default 100)")
    p.add_argument("--rounds", type=int, default=200, help="training rounds (default 200)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--quick", action="store_true", help="smoke run: one seed, a 2-point grid per method")
    p.add_argument("--out", default=None,
                   help=f"also write the markdown report here (e.g. {DEFAULT_OUT.relative_to(ROOT)})")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in args.scenarios if s not in SCENARIOS]
    if bad or not args.scenarios:
        p.error(f"--scenarios: unknown {bad}; choose from {', '.join(SCENARIOS)}")
    if args.search_seed in args.seeds:
        p.error("--search-seed must not be a reported seed")
    if args.rounds < 4:
        p.error("--rounds must be >= 4 (one per slice)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/unlearning_methods.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    grids = QUICK_GRIDS if args.quick else GRIDS

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    began = time.perf_counter()
    chosen, results = {}, {}
    with tempfile.TemporaryDirectory(prefix="ostracon-bench-methods-") as tmp:
        for name in args.scenarios:
            work = tempfile.mkdtemp(dir=tmp)
            chosen[name] = search(name, args.search_seed, args.rounds, grids, work, log)
            shutil.rmtree(work)
            results[name] = []
            for seed in args.seeds:
                work = tempfile.mkdtemp(dir=tmp)
                results[name].append(measure(name, seed, args.rounds, chosen[name], work, log))
                shutil.rmtree(work)
    wall_s = time.perf_counter() - began
    text = report(results, chosen, args.seeds, args.search_seed, args.rounds, args.quick, grids, wall_s,
                  command.strip())
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
