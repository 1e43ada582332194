"""Round time of MoNNA vs plain D-SGD as the number of Ray worker actors grows.

    python bench/scale.py [--workers 8,16,32,64] [--rounds 30] [--device cpu|cuda [--num-gpus G]] [--out FILE]

Synthetic Gaussian-mixture data, ``mlp``, one Ray actor per worker on the
local Ray cluster (or ``--address``). For each n: ``monna`` (every worker
mixes all n half-models with ``nna`` around its own) and D-SGD
(``server`` + ``mean``: the driver averages and broadcasts), no Byzantine
workers, so both do the same local work. A round's time is the median over
the measured rounds (the first ``--warmup`` rounds are dropped).

``--device cuda`` puts the workers' tensors on GPUs (``backend.device = "cuda"``), each actor reserving
``--num-gpus`` (default: the cluster's GPUs shared evenly over the n actors, at most 1 each).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time

import ray
import torch

from ostracon.cluster.config import from_dict
from ostracon.cluster.execution.hooks import RoundHooks
from ostracon.cluster.execution.training import train


def round_times(config) -> tuple[list[float], float, float]:
    stamps: list[float] = []
    began = time.perf_counter()
    result = train(config, progress=False, hooks=RoundHooks(lambda t, backend: stamps.append(time.perf_counter())))
    diffs = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return diffs, time.perf_counter() - began, result.summary["honest_test_accuracy"]["mean"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="8,16,32,64")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--samples-per-worker", type=int, default=500)
    parser.add_argument("--address", default="", help="existing Ray cluster (default: start a local one)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="the workers' device")
    parser.add_argument("--num-gpus", type=float, default=0.0,
                        help="GPUs per worker actor with --device cuda (default: the cluster's shared evenly)")
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.workers.split(",")]
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(log_to_driver=False, include_dashboard=False)
    resources = ray.cluster_resources()
    if args.device == "cuda" and not resources.get("GPU"):
        parser.error("--device cuda: the Ray cluster has no GPU")
    rows = []
    began = time.perf_counter()
    for n in sizes:
        row = {"n": n}
        backend = {"name": "ray", "start_timeout_s": 900.0}  # 64 processes importing torch on 2 cores
        if args.device == "cuda":
            # Ray accepts fractions to 4 decimals; n actors share the cluster's GPUs.
            share = args.num_gpus or min(1.0, math.floor(resources["GPU"] / n * 10_000) / 10_000)
            backend |= {"device": "cuda", "num_gpus": share}
        for label, training in (("dsgd", {"protocol": "server", "rule": "mean"}),
                                ("monna", {"protocol": "monna", "rule": "nna"})):
            config = from_dict({
                "data": {"source": "synthetic", "samples": args.samples_per_worker * n, "features": 32,
                         "classes": 10},
                "model": {"name": "mlp"},
                "training": {**training, "workers": n, "f": max(0, (n - 1) // 4), "rounds": args.rounds,
                             "eval_every": args.rounds, "lr": 0.5},
                "backend": backend,
            })
            diffs, wall, acc = round_times(config)
            measured = diffs[args.warmup:] or diffs
            row[label] = statistics.median(measured)
            row[f"{label}_p90"] = sorted(measured)[int(0.9 * (len(measured) - 1))]
            row[f"{label}_wall"] = wall
            row[f"{label}_acc"] = acc
            print(f"n={n} {label}: median round {row[label] * 1000:.1f} ms, wall {wall:.1f}s, acc {acc:.3f}",
                  file=sys.stderr, flush=True)
        rows.append(row)
    ray.shutdown()
    lines = [
        f"config: synthetic ({args.samples_per_worker} samples/worker, 32 features, 10 classes), mlp (hidden 64), "
        f"rounds {args.rounds} (first {args.warmup} dropped), no Byzantine workers, f = (n-1)//4, "
        f"Ray {ray.__version__} local cluster {int(resources.get('CPU', 0))} CPUs, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, workers on {_device_name(args.device)}; "
        f"total {time.perf_counter() - began:.0f}s",
        "",
        "| n workers | D-SGD round (ms, median / p90) | MoNNA round (ms, median / p90) | MoNNA / D-SGD | "
        "D-SGD acc | MoNNA acc | wall D-SGD / MoNNA (s, incl. actor start) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['dsgd'] * 1000:.1f} / {r['dsgd_p90'] * 1000:.1f} | "
            f"{r['monna'] * 1000:.1f} / {r['monna_p90'] * 1000:.1f} | {r['monna'] / r['dsgd']:.2f}x | "
            f"{r['dsgd_acc']:.3f} | {r['monna_acc']:.3f} | {r['dsgd_wall']:.1f} / {r['monna_wall']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(f"Command: `python bench/scale.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n")
            fh.write(table + "\n")
    return 0


def _device_name(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return device


if __name__ == "__main__":
    sys.exit(main())
