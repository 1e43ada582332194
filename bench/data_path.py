"""Where the rows live: peak memory of the driver and of each worker actor while `ostracon train` runs on Ray.

    python bench/data_path.py [--rows 10000,80000,320000] [--format npz|parquet] [--workers 20] [--rounds 2]
                              [--pythonpath DIR] [--data-dir DIR] [--out FILE]

For each size, writes a CIFAR-sized dataset (rows of 3x32x32 uint8 pixels, 10 classes, seeded noise:
only sizes matter here; npz or one parquet file), then runs ``ostracon train`` on it with the Ray
backend (a local Ray cluster, ``logreg``, ``--rounds`` rounds, one group of ``--workers`` workers)
as a child process, and samples every 0.2 s the peak resident set (``VmHWM``) and the private
anonymous memory (``RssAnon``, leaving out file pages a memory map brought in) in ``/proc/PID/status``
(Linux) of the driver (the CLI process) and of every worker actor (processes titled
``ray::WorkerActor``). ``--pythonpath`` runs another build of ostracon (e.g.
``pip install --no-deps --target DIR <old checkout>``) for a before/after table on the same files.
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


def write_data(path: Path, rows: int, seed: int, fmt: str) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(rows, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, size=rows).astype(np.int64)
    if fmt == "npz":
        np.savez(path, X=x, y=y)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 3 * 32 * 32)
    pq.write_table(pa.table({"id": pa.array(np.arange(rows)), "label": pa.array(y), "features": flat}), path,
                   row_group_size=8192)


def config_text(data: Path, fmt: str, workers: int, rounds: int) -> str:
    shape = 'shape = [3, 32, 32]\n' if fmt == "parquet" else ""
    return f"""
seed = 0
[data]
source = "{fmt}"
path = "{data}"
{shape}test_fraction = 0.1
[model]
name = "logreg"
[training]
workers = {workers}
rounds = {rounds}
eval_every = {rounds}
batch_size = 32
[backend]
name = "ray"
start_timeout_s = 900
"""


def memory_kib(pid: int) -> tuple[int, int]:
    """(peak resident set ``VmHWM``, private anonymous memory now ``RssAnon``) in KiB; zeros once gone.
    ``RssAnon`` leaves out file pages a memory map brought in (the page cache, shared and reclaimable)."""
    found = {"VmHWM:": 0, "RssAnon:": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line else ""
            if key in found:
                found[key] = int(line.split()[1])
    except OSError:
        pass
    return found["VmHWM:"], found["RssAnon:"]


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


def run(data: Path, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(config_text(data, args.format, args.workers, args.rounds))
        env = dict(os.environ)
        if args.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([args.pythonpath, env.get("PYTHONPATH", "")])
        began = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "ostracon.cluster.cli", "train", "-c", str(config), "-o",
                                  str(Path(tmp) / "state"), "--no-progress"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        driver, driver_anon, actors, anon = 0, 0, {}, {}
        while child.poll() is None:
            peak, now = memory_kib(child.pid)
            driver, driver_anon = max(driver, peak), max(driver_anon, now)
            for pid in actor_pids():
                peak, now = memory_kib(pid)
                actors[pid] = max(actors.get(pid, 0), peak)
                anon[pid] = max(anon.get(pid, 0), now)
            time.sleep(0.2)
        output = child.stdout.read() if child.stdout else ""
        wall = time.perf_counter() - began
        if child.returncode != 0:
            raise SystemExit(f"ostracon train failed ({child.returncode}):\n{output}")
        first = json.loads((Path(tmp) / "state" / "metrics.jsonl").read_text().splitlines()[0])
    return {"driver_mib": driver / 1024, "driver_anon_mib": driver_anon / 1024, "actors": len(actors),
            "actor_max_mib": max(actors.values(), default=0) / 1024,
            "actor_anon_mib": max(anon.values(), default=0) / 1024,
            "actor_sum_mib": sum(actors.values()) / 1024, "wall_s": wall, "first_round_s": first["elapsed_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,80000,320000", help="comma-separated dataset sizes")
    parser.add_argument("--format", choices=("npz", "parquet"), default="npz")
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pythonpath", default="", help="run the ostracon importable from this directory")
    parser.add_argument("--data-dir", help="keep (and reuse) the generated datasets here")
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args(argv)
    build = args.pythonpath or "this checkout"
    lines = [
        f"# data path: `ostracon train` on Ray over {args.format} files of 3x32x32 uint8 rows",
        "",
        f"config: logreg, 1 group x {args.workers} workers, {args.rounds} rounds, test_fraction 0.1; "
        f"build: {build}; python {platform.python_version()}, {os.cpu_count()} CPUs",
        "",
        "| rows | on disk (MiB) | float32 size (MiB) | driver peak RSS (MiB) | driver max RssAnon (MiB) | "
        "actor peak RSS, max (MiB) | actor max RssAnon, max (MiB) | actors' peaks summed (MiB) | "
        "first round at (s) | wall (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(args.data_dir) if args.data_dir else Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        for rows in (int(r) for r in args.rows.split(",")):
            data = where / f"rows{rows}.{args.format}"
            if not data.exists():
                write_data(data, rows, args.seed, args.format)
            r = run(data, args)
            line = (f"| {rows} | {data.stat().st_size / 2**20:.0f} | {rows * 3072 * 4 / 2**20:.0f} | "
                    f"{r['driver_mib']:.0f} | {r['driver_anon_mib']:.0f} | {r['actor_max_mib']:.0f} | "
                    f"{r['actor_anon_mib']:.0f} | {r['actor_sum_mib']:.0f} | "
                    f"{r['first_round_s']:.1f} | {r['wall_s']:.1f} |")
            print(line, flush=True)
            lines.append(line)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
