"""Coordinator-service benchmark: concurrent exact deletions through the gRPC API of a warm cluster.

    python bench/service.py [--backend local,ray] [--threads 20] [--per-thread 10] [--rounds 80]
                            [--config examples/digits_sisa.toml] [--seed 0] [--out bench/results/service.md]
                            [--idle-streams 64] [--watchers 32] [--no-hostile]
    ostracon bench service [same arguments]

Setting: ``examples/digits_sisa.toml`` (digits, ``mlp``, 2 groups x 4 MoNNA workers of which 1
Byzantine ``sign_flip``, 4 slices) with ``--rounds`` rounds per group (default 80 instead of the
config's 200, to keep the run short on a shared machine). The state is trained once, in process;
``local`` and ``ray`` give bit-identical models, so both backends serve copies of the same state.

For each backend: start a ``Deployment`` on a copy of the state (on Ray: one actor per worker, started
once) behind a ``CoordinatorServer`` on a free loopback port; ``--threads`` client threads (one
``CoordinatorClient`` each) send ``--per-thread`` exact single-id deletions each, one after the other,
all at once (distinct ids held by honest training workers, seeded). Acknowledgement latency is the
time ``Delete`` takes to answer (the operation is durable by then); throughput is deletions applied
per second from the first request to the last operation's final update. Then every operation must
have SUCCEEDED and every id be in the ledger and in exactly one certificate, or the benchmark fails.

The hostile mix (unless ``--no-hostile``): once the quiet load is applied, the same load again (fresh
ids) while ``--idle-streams`` server-reflection streams are held open without a token, their requests
never sent (a hostile client holding calls), and ``--watchers`` WatchOperation streams follow operations:
all of them a deletion submitted just before the load (replaying while the load is acknowledged), then
the load's own operations as they are acknowledged. A sampler reads the server's counts of open
health/reflection calls and watch streams every 5 ms during the acknowledgements; their minimum is
reported. The acknowledgement p50/p99 of the quiet and the hostile load are compared (target: the
hostile p99 within 1.5x of the quiet one).

One deletion: a further id deleted through the idle warm service (``delete(wait=True)``, wall time)
vs the same id deleted by the cold ``ostracon unlearn`` CLI (a subprocess on a fresh copy of the
trained state, wall time: interpreter start, imports, loading, starting the backend's workers, replay,
shutdown).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from ostracon.cluster import CoordinatorClient  # noqa: E402
from ostracon.cluster.config import Config, load  # noqa: E402
from ostracon.cluster.coordinator.deployment import Deployment  # noqa: E402
from ostracon.cluster.execution.plan import make_plan  # noqa: E402
from ostracon.cluster.execution.training import train  # noqa: E402
from ostracon.cluster.service.server import CoordinatorServer  # noqa: E402
from ostracon.cluster.storage.ledger import open_ledger  # noqa: E402
from ostracon.v1 import coordinator_pb2 as pb  # noqa: E402
from ostracon.v1 import coordinator_pb2_grpc as pb_grpc  # noqa: E402

DEFAULT_CONFIG = ROOT / "examples" / "digits_sisa.toml"
DEFAULT_OUT = ROOT / "bench" / "results" / "service.md"
CLIENT_TIMEOUT_S = 600.0
REFLECTION_STREAM = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
HOSTILE_P99_TARGET = 1.5  # the hostile load's ack p99 within this factor of the quiet one's


# ----------------------------------------------------------------------------------------------- setup


def bench_config(path: str, rounds: int, seed: int) -> Config:
    # One evaluation, at the end: the benchmark times deletions, not monitoring.
    return load(path, {"training.rounds": rounds, "training.eval_every": rounds, "seed": seed})


def honest_ids(config: Config, count: int, seed: int) -> list[str]:
    """``count`` distinct ids held by training (honest) workers, seeded: every one needs a replay."""
    plan = make_plan(config)
    pool = sorted(i for i, (_, j, _) in plan.placement.items() if plan.specs[j].trains)
    if count > len(pool):
        raise SystemExit(f"service: {count} deletions asked, only {len(pool)} honest training ids")
    rng = np.random.default_rng(seed)
    return [pool[k] for k in rng.choice(len(pool), size=count, replace=False)]


def start_ray(backend: str) -> None:
    if backend == "ray":
        import ray

        ray.shutdown()
        ray.init(num_cpus=os.cpu_count(), log_to_driver=False, include_dashboard=False)


def stop_ray(backend: str) -> None:
    if backend == "ray":
        import ray

        ray.shutdown()


# ----------------------------------------------------------------------------------------------- load


def send_deletions(address: str, ids: list[str], start: threading.Barrier, acks: list, errors: list) -> None:
    """One client thread: delete each id in turn, recording (operation id, acknowledgement latency)."""
    with CoordinatorClient(address, timeout=CLIENT_TIMEOUT_S) as client:
        start.wait()
        for sample in ids:
            began = time.perf_counter()
            try:
                op = client.delete([sample], mode="exact")
            except Exception as exc:  # noqa: BLE001 - a lost request is what the benchmark counts
                errors.append(f"{sample}: {exc}")
                continue
            acks.append((op["id"], sample, time.perf_counter() - began))


def run_load(address: str, ids: list[str], threads: int, acks: list | None = None) -> dict:
    """Every thread sends its share at once; returns acknowledgements (appended to ``acks`` as they come,
    when given), errors and the start time."""
    shares = [ids[k::threads] for k in range(threads)]
    start = threading.Barrier(threads + 1)
    acks = [] if acks is None else acks
    errors: list = []
    workers = [threading.Thread(target=send_deletions, args=(address, share, start, acks, errors))
               for share in shares]
    for w in workers:
        w.start()
    start.wait()
    began = time.time()
    for w in workers:
        w.join()
    return {"acks": acks, "errors": errors, "began": began, "acked_after_s": time.time() - began}


def wait_all(client: CoordinatorClient, op_ids: list[str]) -> dict[str, dict]:
    """Every operation's final state (watch ends there)."""
    return {op_id: list(client.watch(op_id))[-1][1] for op_id in op_ids}


# ----------------------------------------------------------------------------------------------- hostile mix


class IdleStreams:
    """``count`` server-reflection streams opened without a token whose requests never come, over a few
    connections: what a hostile client holds open to tie the server up."""

    def __init__(self, address: str, count: int, connections: int = 8):
        self.release = threading.Event()
        self.channels = [grpc.insecure_channel(address) for _ in range(max(1, min(connections, count)))]
        self.calls = [self.channels[k % len(self.channels)].stream_stream(REFLECTION_STREAM)(
            self._never(), timeout=CLIENT_TIMEOUT_S) for k in range(count)]

    def _never(self):
        self.release.wait()
        return
        yield  # a request iterator that sends nothing until released

    def close(self) -> None:
        for call in self.calls:
            call.cancel()
        self.release.set()
        for channel in self.channels:
            channel.close()


class Watchers:
    """``count`` threads, each holding one WatchOperation stream: first on ``lead_op`` (replaying while the
    load is acknowledged), then on the load's operations in the order they are acknowledged (watcher k
    follows acknowledgements k, k + count, ...), each to its final state."""

    def __init__(self, address: str, count: int, lead_op: str, acks: list):
        self.address, self.count, self.acks = address, count, acks
        self.stop = threading.Event()
        self.refused = 0  # streams refused (RESOURCE_EXHAUSTED), retried
        self._calls: dict[int, grpc.Future] = {}
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._follow, args=(k, lead_op), daemon=True) for k in range(count)]
        for t in self.threads:
            t.start()

    def _next_op(self, index: int) -> str | None:
        while not self.stop.is_set():
            if index < len(self.acks):
                return self.acks[index][0]
            time.sleep(0.02)
        return None

    def _follow(self, k: int, op_id: str | None) -> None:
        index = k
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            while op_id is not None and not self.stop.is_set():
                call = stub.WatchOperation(pb.WatchOperationRequest(operation_id=op_id), timeout=CLIENT_TIMEOUT_S)
                with self._lock:
                    self._calls[k] = call
                try:
                    for _ in call:
                        pass
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and not self.stop.is_set():
                        self.refused += 1
                        time.sleep(0.01)
                        continue  # the same operation again
                op_id = self._next_op(index)
                index += self.count

    def close(self) -> None:
        self.stop.set()
        with self._lock:
            for call in self._calls.values():
                call.cancel()
        for t in self.threads:
            t.join()


class OpenCounts:
    """Samples the server's open health/reflection calls and open watch streams every ``every`` seconds."""

    def __init__(self, server: CoordinatorServer, every: float = 0.005):
        self.server, self.every = server, every
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:  # the counts live on the server's event loop; a torn read is skipped
                watches = sum(list(self.server.servicer._watches.values()))
            except RuntimeError:
                continue
            self.samples.append((self.server.guard.open_calls, watches))

    def close(self) -> tuple[int, int]:
        """(min open health/reflection calls, min open watch streams) over the samples."""
        self._stop.set()
        self._thread.join()
        if not self.samples:
            return 0, 0
        return min(s[0] for s in self.samples), min(s[1] for s in self.samples)


def _until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


def hostile_load(server: CoordinatorServer, client: CoordinatorClient, lead: str, ids: list[str], threads: int,
                 idle_streams: int, watchers: int) -> dict:
    """The load again while ``idle_streams`` idle unauthenticated streams and ``watchers`` watch streams are
    open; returns the load (its acknowledgements include the lead deletion's) and the open counts."""
    lead_op = client.delete([lead], mode="exact")
    idle = IdleStreams(server.address, idle_streams)
    acks: list = []
    watching = Watchers(server.address, watchers, lead_op["id"], acks)
    try:
        _until(lambda: server.guard.open_calls >= idle_streams
               and sum(list(server.servicer._watches.values())) >= watchers)
        counts = OpenCounts(server)
        load = run_load(server.address, ids, threads, acks)
        open_idle, open_watches = counts.close()
    finally:
        watching.close()
        idle.close()
    load["lead"] = (lead_op["id"], lead)
    load.update(open_idle=open_idle, open_watches=open_watches, refused_watches=watching.refused)
    return load


def ledger_requests(state_dir: str) -> int:
    with open_ledger(state_dir, readonly=True) as ledger:
        return len(ledger.requests())


def percentiles(acks: list) -> tuple[float, float]:
    latencies = np.array([lat for _, _, lat in acks]) * 1e3
    if not len(latencies):
        return float("nan"), float("nan")
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))


# ----------------------------------------------------------------------------------------------- checks


def certified_counts(state_dir: str) -> Counter:
    """How many certificate files name each deleted id."""
    counts: Counter = Counter()
    folder = os.path.join(state_dir, "certificates")
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), encoding="utf-8") as fh:
            counts.update(json.load(fh)["deleted"])
    return counts


def check_applied(state_dir: str, ids: list[str], finals: dict[str, dict]) -> tuple[list[str], int]:
    """(problems, ledger requests): problems is empty when every deletion was applied exactly once."""
    problems = [f"{o} is {op['state']}: {op['message']}" for o, op in finals.items() if op["state"] != "SUCCEEDED"]
    with open_ledger(state_dir, readonly=True) as ledger:
        missing = sorted(set(ids) - set(ledger.deletions()))
        replays = len(ledger.requests())
    if missing:
        problems.append(f"{len(missing)} id(s) not in the ledger, e.g. {missing[:5]}")
    counts = certified_counts(state_dir)
    wrong = sorted(i for i in ids if counts[i] != 1)
    if wrong:
        problems.append(f"{len(wrong)} id(s) not in exactly one certificate, e.g. {wrong[:5]}")
    return problems, replays


# ----------------------------------------------------------------------------------------------- one backend


def warm_run(trained: str, workdir: str, backend: str, load_ids: list[str], single: str, threads: int,
             hostile: dict | None = None) -> dict:
    """The service phase on a copy of ``trained``: the concurrent load, the hostile mix when ``hostile``
    (``{"lead", "ids", "idle_streams", "watchers"}``) is given, then one deletion on the idle service."""
    state = os.path.join(workdir, f"warm-{backend}")
    shutil.copytree(trained, state)
    start_ray(backend)
    began = time.perf_counter()
    deployment = Deployment(state, overrides={"backend.name": backend},
                            max_ids_per_request=max(10_000, len(load_ids)))
    deployment.start()
    server = CoordinatorServer(deployment, host="127.0.0.1", port=0)
    server.start()
    server.mark_serving()
    warm_up_s = time.perf_counter() - began
    rough = None
    try:
        load = run_load(server.address, load_ids, threads)
        with CoordinatorClient(server.address, timeout=CLIENT_TIMEOUT_S) as client:
            finals = wait_all(client, [o for o, _, _ in load["acks"]])
            replays = ledger_requests(state)
            if hostile:
                rough = hostile_load(server, client, hostile["lead"], hostile["ids"], threads,
                                     hostile["idle_streams"], hostile["watchers"])
                rough["finals"] = wait_all(client, [o for o, _, _ in rough["acks"]] + [rough["lead"][0]])
            one_began = time.perf_counter()
            one = client.delete([single], wait=True)
            one_s = time.perf_counter() - one_began
    finally:
        server.stop()
        deployment.close(drain=True)
        stop_ray(backend)
    deleted = [s for _, s, _ in load["acks"]] + [single]
    all_finals = {**finals, one["id"]: one}
    if rough:
        deleted += [s for _, s, _ in rough["acks"]] + [rough["lead"][1]]
        all_finals |= rough["finals"]
    problems, _ = check_applied(state, deleted, all_finals)
    problems += [f"lost: {e}" for e in load["errors"]]
    last_final = max(op["update_time"] for op in finals.values()) if finals else load["began"]
    p50, p99 = percentiles(load["acks"])
    row = {"backend": backend, "sent": len(load_ids), "acked": len(load["acks"]),
           "applied": sum(op["state"] == "SUCCEEDED" for op in finals.values()),
           "lost": len(load_ids) - len(load["acks"]), "problems": problems, "replays": replays,
           "ack_p50_ms": p50, "ack_p99_ms": p99,
           "acked_after_s": load["acked_after_s"], "load_s": last_final - load["began"],
           "per_s": len(finals) / max(last_final - load["began"], 1e-9), "warm_up_s": warm_up_s,
           "one_warm_s": one_s}
    if rough:
        problems += [f"lost under the hostile mix: {e}" for e in rough["errors"]]
        h50, h99 = percentiles(rough["acks"])
        row["hostile"] = {"sent": len(hostile["ids"]) if hostile else 0, "acked": len(rough["acks"]),
                          "ack_p50_ms": h50, "ack_p99_ms": h99, "acked_after_s": rough["acked_after_s"],
                          "idle_streams": hostile["idle_streams"] if hostile else 0,
                          "watchers": hostile["watchers"] if hostile else 0, "open_idle": rough["open_idle"],
                          "open_watches": rough["open_watches"], "refused_watches": rough["refused_watches"]}
    return row


def cold_run(trained: str, workdir: str, backend: str, single: str) -> float:
    """Wall time of ``ostracon unlearn`` deleting ``single`` from a fresh copy of ``trained``."""
    state = os.path.join(workdir, f"cold-{backend}")
    shutil.copytree(trained, state)
    command = [sys.executable, "-m", "ostracon.cluster.cli", "unlearn", "--state-dir", state, "--ids", single,
               "--backend", backend]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"service: {shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    return wall


# ----------------------------------------------------------------------------------------------- report


def format_table(rows: list[dict]) -> str:
    head = ("| backend | sent / acknowledged / applied / lost | replays (coalesced) | ack latency p50 / p99 (ms) "
            "| all acknowledged after (s) | applied per s | warm-up (s) | one deletion: warm service (s) "
            "| one deletion: cold `ostracon unlearn` (s) | cold / warm | all applied exactly once |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['sent']} / {r['acked']} / {r['applied']} / {r['lost']} | {r['replays']} "
                     f"| {r['ack_p50_ms']:.1f} / {r['ack_p99_ms']:.1f} | {r['acked_after_s']:.2f} | {r['per_s']:.1f} "
                     f"| {r['warm_up_s']:.1f} | {r['one_warm_s']:.2f} | {r['one_cold_s']:.2f} "
                     f"| {r['one_cold_s'] / r['one_warm_s']:.1f}x | {'yes' if not r['problems'] else 'NO'} |")
    return "\n".join(lines)


def format_hostile_table(rows: list[dict]) -> str:
    head = ("| backend | quiet: ack p50 / p99 (ms) | hostile: ack p50 / p99 (ms) | hostile / quiet p99 "
            f"| p99 within {HOSTILE_P99_TARGET}x | open during the hostile acknowledgements (min): idle streams / "
            "watch streams | hostile: sent / acknowledged | all acknowledged after: quiet / hostile (s) |")
    lines = [head, "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        h = r["hostile"]
        ratio = h["ack_p99_ms"] / r["ack_p99_ms"]
        lines.append(f"| {r['backend']} | {r['ack_p50_ms']:.1f} / {r['ack_p99_ms']:.1f} "
                     f"| {h['ack_p50_ms']:.1f} / {h['ack_p99_ms']:.1f} | {ratio:.2f}x "
                     f"| {'yes' if ratio <= HOSTILE_P99_TARGET else 'NO'} "
                     f"| {h['open_idle']} of {h['idle_streams']} / {h['open_watches']} of {h['watchers']} "
                     f"| {h['sent']} / {h['acked']} | {r['acked_after_s']:.2f} / {h['acked_after_s']:.2f} |")
    return "\n".join(lines)


def hostile_section(args, rows: list[dict]) -> list[str]:
    rows = [r for r in rows if "hostile" in r]
    if not rows:
        return []
    return [
        "## Under the hostile mix",
        "",
        f"The same load again ({args.threads} x {args.per_thread} fresh ids) once the quiet one is applied, while "
        f"{args.idle_streams} server-reflection streams are held open without a token (their requests never "
        f"sent) and {args.watchers} `WatchOperation` streams follow operations: first a deletion submitted just "
        "before the load (replaying while the load is acknowledged, which the quiet load did not have), then "
        "the load's operations as they are acknowledged. The open counts are the server's own (open "
        "health/reflection calls, open watch streams), sampled every 5 ms while the load was acknowledged; "
        f"their minimum is shown. Target: the hostile ack p99 within {HOSTILE_P99_TARGET}x of the quiet one.",
        "",
        format_hostile_table(rows),
        "",
    ]


def report(config_path: str, config: Config, args, rows: list[dict], train_s: float, wall_s: float,
           load_before: tuple, load_after: tuple, command: str) -> str:
    import ray
    import torch

    problems = [f"- {r['backend']}: {p}" for r in rows for p in r["problems"]]
    parts = [
        "# Coordinator service: concurrent exact deletions through gRPC",
        "",
        f"Command: `{command}`",
        "",
        f"- config: `{os.path.relpath(config_path, ROOT)}` with training.rounds = {config.training.rounds}, "
        f"seed {config.seed}: {config.unlearning.groups} groups x {config.training.workers} workers "
        f"({config.byzantine.count} Byzantine `{config.byzantine.behaviour}` per group), "
        f"{config.unlearning.slices} slices, model `{config.model.name}`, data `{config.data.source}`",
        f"- load: {args.threads} client threads x {args.per_thread} exact single-id deletions each "
        f"(distinct ids held by honest training workers), server on 127.0.0.1, no token, no TLS",
        f"- trained once in process: {train_s:.1f} s; total wall time {wall_s:.1f} s",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}, Ray {ray.__version__}; load average (1/5/15 min) before "
        f"{'/'.join(f'{x:.1f}' for x in load_before)}, after {'/'.join(f'{x:.1f}' for x in load_after)} "
        "(a shared machine: other jobs ran meanwhile; one run, not repeated)",
        "",
        "Ack latency: time for `Delete` to answer (the operation is journaled, durable, before it answers). "
        "Applied per s: deletions applied / time from the first request to the last operation's final update. "
        "Replays: ledger requests the load needed, the one-deletion measurement left out "
        "(pending operations are coalesced into one replay). "
        "Warm-up: starting the deployment (loading, starting the workers; on Ray the actors) and the server. "
        "One deletion: one more id through the idle warm service (`delete(wait=True)`) vs the same id by the "
        "cold `ostracon unlearn` CLI on a fresh copy of the same trained state (a subprocess: interpreter, "
        "imports, loading, starting the workers, replay, shutdown). All applied exactly once: every "
        "operation SUCCEEDED (the hostile mix's too), every id is in the ledger and in exactly one certificate, "
        "none lost.",
        "",
        format_table(rows),
        "",
        *hostile_section(args, rows),
    ]
    if problems:
        parts += ["Problems:", "", *problems, ""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="service", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="base config (TOML)")
    p.add_argument("--backend", default="local,ray", help="local, ray, or both comma-separated (default local,ray)")
    p.add_argument("--threads", type=int, default=20, help="client threads (default 20)")
    p.add_argument("--per-thread", type=int, default=10, help="exact deletions per thread (default 10)")
    p.add_argument("--rounds", type=int, default=80, help="rounds per group (default 80)")
    p.add_argument("--seed", type=int, default=0, help="run seed and id-choice seed (default 0)")
    p.add_argument("--out", default=None, help=f"also write the report here (e.g. {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--idle-streams", type=int, default=64,
                   help="hostile mix: idle unauthenticated server-reflection streams (default 64)")
    p.add_argument("--watchers", type=int, default=32, help="hostile mix: WatchOperation streams (default 32; "
                                                            "the server allows 32 per caller)")
    p.add_argument("--no-hostile", action="store_true", help="skip the hostile mix (the quiet load only)")
    args = p.parse_args(argv)
    args.backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    if not args.backends or any(b not in ("local", "ray") for b in args.backends):
        p.error(f"--backend: local, ray or local,ray (got {args.backend!r})")
    for name in ("threads", "per_thread", "rounds", "idle_streams", "watchers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/service.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    load_before = os.getloadavg()
    began = time.perf_counter()
    config = bench_config(args.config, args.rounds, args.seed)
    total = args.threads * args.per_thread
    *load_ids, single = honest_ids(config, total + 1, args.seed)
    hostile = None
    if not args.no_hostile:  # fresh ids beyond the quiet load's: the same draw for it as without the mix
        taken = set(load_ids) | {single}
        more = [i for i in honest_ids(config, 2 * total + 2, args.seed + 1) if i not in taken]
        if len(more) < total + 1:
            raise SystemExit(f"service: not enough honest training ids for the hostile mix ({len(more)})")
        hostile = {"lead": more[0], "ids": more[1:total + 1], "idle_streams": args.idle_streams,
                   "watchers": args.watchers}
    rows = []
    with tempfile.TemporaryDirectory(prefix="ostracon-bench-service-") as workdir:
        trained = os.path.join(workdir, "trained")
        log(f"training {args.config} ({args.rounds} rounds) into {trained}")
        t = time.perf_counter()
        train(config, trained, progress=False)
        train_s = time.perf_counter() - t
        for backend in args.backends:
            log(f"{backend}: warm service, {args.threads} threads x {args.per_thread} deletions"
                + ("" if hostile is None else f", then again with {args.idle_streams} idle streams and "
                   f"{args.watchers} watchers open"))
            row = warm_run(trained, workdir, backend, load_ids, single, args.threads, hostile)
            log(f"{backend}: cold `ostracon unlearn` of one id")
            row["one_cold_s"] = cold_run(trained, workdir, backend, single)
            rows.append(row)
    text = report(args.config, config, args, rows, train_s, time.perf_counter() - began, load_before,
                  os.getloadavg(), command.strip())
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0 if all(not r["problems"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
