"""Where the rows live: peak memory of the driver and of each worker actor while `ostracon train` runs on Ray.

    python bench/data_path.py [--rows 80000] [--workers 20] [--rounds 2] [--pythonpath DIR] [--out FILE]

Writes a CIFAR-sized npz (``--rows`` rows of 3x32x32 uint8 pixels, 10 classes, seeded noise: only
sizes matter here), then runs ``ostracon train`` on it with the Ray backend (a local Ray cluster,
``logreg``, ``--rounds`` rounds, one group of ``--workers`` workers) as a child process, and samples
every 0.2 s the peak resident set (``VmHWM`` in ``/proc/PID/status``, Linux) of the driver (the CLI
process) and of every worker actor (processes titled ``ray::WorkerActor``). ``--pythonpath`` runs
another build of ostracon (e.g. ``pip install --no-deps --target DIR <old checkout>``) for a
before/after table on the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_npz(path: Path, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(rows, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, size=rows).astype(np.int64)
    np.savez(path, X=x, y=y)


def config_text(npz: Path, workers: int, rounds: int) -> str:
    return f"""
seed = 0
[data]
source = "npz"
path = "{npz}"
test_fraction = 0.1
[model]
name = "logreg"
[training]
workers = {workers}
rounds = {rounds}
eval_every = {rounds}
batch_size = 32
[backend]
name = "ray"
"""


def peak_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def actor_pids() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if title.startswith(b"ray::WorkerActor"):
                found.append(int(entry.name))
    return found


def run(npz: Path, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(config_text(npz, args.workers, args.rounds))
        env = dict(os.environ)
        if args.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([args.pythonpath, env.get("PYTHONPATH", "")])
        began = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "ostracon.cluster.cli", "train", "-c", str(config), "-o",
                                  str(Path(tmp) / "state"), "--no-progress"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        driver, actors = 0, {}
        while child.poll() is None:
            driver = max(driver, peak_kib(child.pid) or 0)
            for pid in actor_pids():
                actors[pid] = max(actors.get(pid, 0), peak_kib(pid) or 0)
            time.sleep(0.2)
        output = child.stdout.read() if child.stdout else ""
        wall = time.perf_counter() - began
        if child.returncode != 0:
            raise SystemExit(f"ostracon train failed ({child.returncode}):\n{output}")
        summary = json.loads((Path(tmp) / "state" / "summary.json").read_text())
    return {"driver_mib": driver / 1024, "actors": len(actors),
            "actor_max_mib": max(actors.values(), default=0) / 1024,
            "actor_sum_mib": sum(actors.values()) / 1024, "wall_s": wall,
            "accuracy": summary["honest_test_accuracy"]["mean"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=80000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pythonpath", default="", help="run the ostracon importable from this directory")
    parser.add_argument("--data", help="reuse (or write) the npz here instead of a temporary file")
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(args.data) if args.data else Path(tmp) / "cifar_sized.npz"
        if not npz.exists():
            write_npz(npz, args.rows, args.seed)
        size_mib = npz.stat().st_size / 2**20
        result = run(npz, args)
    build = args.pythonpath or "this checkout"
    lines = [
        f"# data path: `ostracon train` on Ray, npz of {args.rows} x 3x32x32 uint8 ({size_mib:.0f} MiB on disk)",
        "",
        f"config: logreg, 1 group x {args.workers} workers, {args.rounds} rounds, test_fraction 0.1; "
        f"build: {build}; python {platform.python_version()}, {os.cpu_count()} CPUs",
        "",
        "| driver peak RSS (MiB) | actors | actor peak RSS max (MiB) | actors' peaks summed (MiB) | wall (s) |",
        "|---:|---:|---:|---:|---:|",
        f"| {result['driver_mib']:.0f} | {result['actors']} | {result['actor_max_mib']:.0f} | "
        f"{result['actor_sum_mib']:.0f} | {result['wall_s']:.1f} |",
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
