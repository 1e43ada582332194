"""Per-request cost benchmark: what one exact single-id deletion costs through a warm coordinator, with no
history and after a history of many prior deletions (docs/design.md, invariant 9: work follows the request).

    python bench/deletion_cost.py [--samples 114000] [--history 30000] [--deletions 15] [--rounds 8]
                                  [--workers 4] [--groups 4] [--slices 4] [--history-requests 3]
                                  [--profile-top 25] [--seed 0] [--out bench/results/deletion_cost.md]

Setting: the ``synthetic`` source (a Gaussian mixture, ``--samples`` rows, 32 features, 10 classes, 20%
held out), ``logreg``, the in-process ``local`` backend, ``--groups`` groups x ``--workers`` MoNNA workers
(no Byzantine worker), ``--slices`` slices, ``--rounds`` rounds (evaluated once, at the end). The state
is trained once, in process, into a temporary directory.

A ``Deployment`` (the class ``ostracon serve`` runs) is started on it (workers started once, kept warm,
then 3 s idle);
``--deletions`` single-id exact deletions are sent one after the other (``Deployment.delete``, then wait
for the operation's final state: the latency is submit -> SUCCEEDED, i.e. journal, tombstones, replay,
promotion, publication, derived files). Then a history of ``--history`` prior deletions is created
cheaply, in ``--history-requests`` large requests through the same deployment (one replay each), and
``--deletions`` further single-id deletions are timed again. The ids are seeded, drawn over the
training ids; the two timed sets are drawn the same way (same slice mix on average).

Breakdown: the deployment's worker thread is profiled (``cProfile``) during each timed phase; the table
lists the cumulative seconds per deletion of the functions a deletion goes through (the replay itself,
the store audit, the ledger reads, the derived files) and ``--profile-top`` entries by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from ostracon.cluster.config import Config  # noqa: E402
from ostracon.cluster.config.schema import from_dict  # noqa: E402
from ostracon.cluster.coordinator.deployment import Deployment  # noqa: E402
from ostracon.cluster.execution.plan import make_plan  # noqa: E402
from ostracon.cluster.execution.training import train  # noqa: E402
from ostracon.cluster.storage.ledger import open_ledger  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "deletion_cost.md"
WAIT_S = 1800.0
IDLE_S = 3.0

# (label, function-name fragments matched against "file:line(function)") of the breakdown's rows
STEPS = (
    ("whole request (_process_batch)", ("deployment.py", "(_process_batch)")),
    ("validate + journal (journal_request)", ("execute.py", "(journal_request)")),
    ("state refresh (TrainedState.refresh)", ("trained.py", "(refresh)")),
    ("store sync (sync_stores)", ("trained.py", "(sync_stores)")),
    ("  store audit (store_problems)", ("trained.py", "(store_problems)")),
    ("  store tombstone + compaction (ShardStore.delete)", ("shard_store.py", "(delete)")),
    ("  workers re-read stores (reopen_store)", ("worker.py", "(reopen_store)")),
    ("replay (replay_groups)", ("exact.py", "(replay_groups)")),
    ("replay starts / checkpoint audit (replay_starts)", ("exact.py", "(replay_starts)")),
    ("published models (final_thetas)", ("trained.py", "(final_thetas)")),
    ("evaluation (evaluate_version)", ("exact.py", "(evaluate_version)")),
    ("commit (Ledger.publish)", ("ledger.py", "(publish)")),
    ("derived files (finish_published)", ("exact.py", "(finish_published)")),
    ("  summary/metrics/plot (update_outputs)", ("outputs.py", "(update_outputs)")),
    ("ledger: all deletions (Ledger.deletions)", ("ledger.py", "(deletions)")),
    ("ledger: all requests (Ledger.requests)", ("ledger.py", "(requests)")),
    ("ledger: all versions (Ledger.versions)", ("ledger.py", "(versions)")),
    ("sha256 of files (file_sha256)", ("durable.py", "(file_sha256)")),
    ("serve the new model (_cache_model)", ("deployment.py", "(_cache_model)")),
)


def bench_config(args: argparse.Namespace) -> Config:
    return from_dict({
        "seed": args.seed,
        "data": {"source": "synthetic", "samples": args.samples, "features": 32, "classes": 10},
        "model": {"name": "logreg"},
        "training": {"workers": args.workers, "f": 0, "rounds": args.rounds, "eval_every": args.rounds,
                     "pre": []},
        "unlearning": {"groups": args.groups, "slices": args.slices},
        "backend": {"name": "local"},
    })


class ProfiledDeployment(Deployment):
    """A deployment whose worker thread is profiled while ``profiler`` is set (cProfile is per thread)."""

    profiler: cProfile.Profile | None = None

    def _process_batch(self, st):  # type: ignore[no-untyped-def]
        profiler = self.profiler
        if profiler is None:
            return super()._process_batch(st)
        profiler.enable()
        try:
            return super()._process_batch(st)
        finally:
            profiler.disable()


def wait(dep: Deployment, op_id: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    last = None
    for _, op in dep.watch(op_id, timeout=WAIT_S):
        last = op
    if last is None or not last.done:
        if time.monotonic() > deadline:
            raise SystemExit(f"operation {op_id} did not finish in {WAIT_S}s")
        last = dep.operation(op_id)
    if last.state.value != "SUCCEEDED":
        raise SystemExit(f"operation {op_id} ended {last.state.value}: {last.message}")
    return {"id": last.id, "version": last.model_version}


def timed_deletions(dep: ProfiledDeployment, ids: Sequence[str]) -> tuple[list[float], pstats.Stats]:
    profiler = cProfile.Profile()
    dep.profiler = profiler
    latencies = []
    try:
        for sample in ids:
            began = time.perf_counter()
            op = dep.delete([sample], mode="exact")
            wait(dep, op.id)
            latencies.append(time.perf_counter() - began)
    finally:
        dep.profiler = None
    return latencies, pstats.Stats(profiler)


def step_rows(stats: pstats.Stats, count: int) -> list[tuple[str, float, int]]:
    """(label, cumulative seconds per deletion, calls per deletion) of each STEPS row found."""
    table = stats.stats  # type: ignore[attr-defined]
    rows = []
    for label, (file_part, func_part) in STEPS:
        cum, calls = 0.0, 0
        for (file, _line, func), (_, ncalls, _, ct, _) in table.items():
            if file.endswith(file_part) and f"({func})" == func_part:
                cum += ct
                calls += ncalls
        if calls:
            rows.append((label, cum / count, calls / count))
    return rows


def top_rows(stats: pstats.Stats, count: int, top: int) -> list[tuple[str, float, float]]:
    table = stats.stats  # type: ignore[attr-defined]
    entries = sorted(table.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    out = []
    for (file, line, func), (_, _ncalls, tt, ct, _) in entries:
        where = f"{Path(file).name}:{line}({func})" if line else func
        out.append((where, tt / count, ct / count))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=114000)
    parser.add_argument("--history", type=int, default=30000)
    parser.add_argument("--history-requests", type=int, default=3)
    parser.add_argument("--deletions", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="", help="a note for the table's heading (e.g. before/after)")
    parser.add_argument("--out", default=None, help="append the markdown table to this file")
    args = parser.parse_args(argv)
    config = bench_config(args)
    command = "python bench/deletion_cost.py " + shlex.join(argv if argv is not None else sys.argv[1:])

    plan = make_plan(config)
    pool = sorted(i for i, (_, j, _) in plan.placement.items() if plan.specs[j].trains)
    need = 2 * args.deletions + args.history
    if need > len(pool):
        raise SystemExit(f"deletion_cost: {need} ids needed, only {len(pool)} training ids")
    rng = np.random.default_rng(args.seed)
    chosen = [pool[k] for k in rng.choice(len(pool), size=need, replace=False)]
    fresh_ids, history_ids, later_ids = (chosen[:args.deletions], chosen[args.deletions:args.deletions + args.history],
                                         chosen[args.deletions + args.history:])
    del plan

    work = tempfile.mkdtemp(prefix="ostracon-deletion-cost-")
    state = os.path.join(work, "state")
    try:
        began = time.perf_counter()
        train(config, state, progress=False)
        train_s = time.perf_counter() - began
        per_request = max(1, -(-args.history // max(1, args.history_requests)))
        dep = ProfiledDeployment(state, max_ids_per_request=max(per_request, 10_000))
        began = time.perf_counter()
        dep.start()
        start_s = time.perf_counter() - began
        time.sleep(IDLE_S)  # let the started deployment go idle (it may redraw the human-readable outputs)
        try:
            results = []
            no_history, stats0 = timed_deletions(dep, fresh_ids)
            results.append(("no history", args.deletions, no_history, stats0))
            began = time.perf_counter()
            for k in range(0, len(history_ids), per_request):
                op = dep.delete(history_ids[k:k + per_request], mode="exact")
                wait(dep, op.id)
            history_s = time.perf_counter() - began
            with open_ledger(state, readonly=True) as ledger:
                prior = len(ledger.deletions())
            with_history, stats1 = timed_deletions(dep, later_ids)
            results.append((f"after {prior} prior deletions", prior, with_history, stats1))
        finally:
            dep.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import torch

    lines = [f"### {args.label or 'deletion cost'}", "",
             f"Command: `{command}`", "",
             f"config: synthetic {args.samples} samples (32 features, 10 classes, 20% held out), logreg, local "
             f"backend, {args.groups} groups x {args.workers} MoNNA workers (no Byzantine), {args.slices} slices, "
             f"{args.rounds} rounds; training {train_s:.1f}s, deployment start {start_s:.1f}s, history of "
             f"{args.history} ids in {args.history_requests} request(s) {history_s:.1f}s; "
             f"{os.cpu_count()} CPUs, torch {torch.__version__}, Python {platform.python_version()}, "
             f"{platform.machine()}", "",
             "| phase | deletions | median latency (s) | p90 latency (s) | mean (s) |",
             "|---|---:|---:|---:|---:|"]
    for name, _, lat, _ in results:
        lines.append(f"| {name} | {len(lat)} | {percentile(lat, 50):.3f} | {percentile(lat, 90):.3f} | "
                     f"{float(np.mean(lat)):.3f} |")
    lines += ["", "Where the time goes (deployment thread, cProfile cumulative seconds per deletion; rows nest "
              "where indented; profiling inflates Python-heavy steps):", "",
              "| step | " + " | ".join(name for name, *_ in results) + " |",
              "|---|" + "---:|" * len(results)]
    per_phase = [{label: (cum, calls) for label, cum, calls in step_rows(st, len(lat))}
                 for _, _, lat, st in results]
    for label, _ in STEPS:
        cells = []
        for table in per_phase:
            cum_calls = table.get(label)
            cells.append("-" if cum_calls is None else f"{cum_calls[0]:.3f} ({cum_calls[1]:g} calls)")
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for name, _, lat, st in results:
        lines += ["", f"Top {args.profile_top} by own time, {name} (seconds per deletion: own / cumulative):", "",
                  "| function | own | cumulative |", "|---|---:|---:|"]
        lines += [f"| `{where}` | {tt:.4f} | {ct:.4f} |" for where, tt, ct in top_rows(st, len(lat), args.profile_top)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
