"""Real multi-process Ray clusters on this machine: ``ray start`` processes, not ``ray.init()`` in-process.

Each test starts its own cluster under a short private ``--temp-dir`` with
``ray start --block`` in a new session, and tears it down by signalling *that*
session only: ``ray stop`` kills every Ray process on the machine (other test
modules' and other users' too), so it is never used here. Teardown then checks
that no process of the session is left.

Ray turns ``127.0.0.1`` into the host's own interface address (on purpose, so
remote nodes could reach it); every connection stays on this machine.

Authentication is pinned per cluster, never left to whether ``~/.ray/auth_token``
happens to exist: a ``ray start --head`` enables token auth when that file
exists, and a driver given an explicit address only sends a token when
``RAY_AUTH_MODE=token``. The CLI test runs the realistic setup: token auth with
a private ``RAY_AUTH_TOKEN`` given to the nodes and to the driver process. The
test whose driver is this very process gives its cluster this process's own
auth settings instead: a local ``ray.init()`` elsewhere in the session (other
test modules) switches the process to token mode for good, and a token-mode
driver cannot work with a cluster that has auth disabled (actor creation is
cancelled), nor can its cached token be swapped for a private one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import ray

from ostracon.cluster.config import load
from ostracon.cluster.execution.hooks import RoundHooks
from ostracon.cluster.execution.training import train

BIN = os.path.dirname(sys.executable)
RAY = os.path.join(BIN, "ray") if os.path.exists(os.path.join(BIN, "ray")) else shutil.which("ray")
OSTRACON = os.path.join(BIN, "ostracon") if os.path.exists(os.path.join(BIN, "ostracon")) else shutil.which("ostracon")

START_TIMEOUT_S = 90
STOP_GRACE_S = 20

# 4 MoNNA workers on digits, 1 of them Byzantine: trains in a few seconds.
CONFIG = """\
seed = 0

[data]
source = "digits"
partition = "iid"

[model]
name = "mlp"
params = { hidden = 32 }

[training]
protocol = "monna"
rule = "nna"
workers = 4
f = 1
rounds = 20
batch_size = 32
lr = 0.5
momentum = 0.9
eval_every = 10

[byzantine]
count = 1
behaviour = "sign_flip"
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is ``sid``: everything a ``ray start`` spawned."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            pids.append(int(entry))
    return pids


class RayNode:
    """One ``ray start --block`` process (a head or a worker node) in its own session.

    Every process it spawns (GCS, raylet, agents, worker processes) stays in that
    session, so ``stop`` can end exactly this node and check nothing survived.
    """

    def __init__(self, temp_dir: str, env: dict, *, head: bool, address: str = "", num_cpus: int = 2):
        self.temp_dir = temp_dir
        self.log_path = os.path.join(temp_dir, f"ray-start-{'head' if head else 'worker'}-{time.time_ns()}.log")
        cmd = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
               "--disable-usage-stats", "--temp-dir", temp_dir,
               "--object-store-memory", str(100 * 1024 * 1024),
               # Ports Ray would otherwise take from fixed defaults (10001, 8265, 52365, ...): a second
               # node or another user's cluster on this machine would collide with them.
               "--dashboard-agent-listen-port", str(_free_port()),
               "--dashboard-agent-grpc-port", str(_free_port()),
               "--runtime-env-agent-port", str(_free_port()),
               "--metrics-export-port", str(_free_port())]
        if head:
            cmd += ["--head", "--port", "0", "--include-dashboard", "false",
                    "--ray-client-server-port", str(_free_port()),
                    "--dashboard-port", str(_free_port())]
        else:
            cmd += ["--address", address]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - the node writes it until stop() closes it
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)

    def log_text(self) -> str:
        with open(self.log_path) as fh:
            return fh.read()

    def wait_started(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while "Ray runtime started." not in self.log_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ray start not ready after {timeout:.0f}s:\n{self.log_text()}")
            time.sleep(0.2)

    def stop(self) -> list[int]:
        """End this node's session; return the pids that had to be SIGKILLed (should be none but stragglers)."""
        sid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # --block: the node shuts its processes down on SIGTERM
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_GRACE_S)
        deadline = time.monotonic() + STOP_GRACE_S
        while _session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.2)
        killed = _session_pids(sid)
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()
        return killed


class Cluster:
    """A head node plus optional worker nodes, all under one short private temp dir."""

    def __init__(self, auth: str) -> None:
        """``auth``: "token" (a private token) or "this-process" (the auth settings of this process)."""
        # Ray's unix socket paths live under the temp dir and must stay under 108 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="ostr-", dir="/tmp")
        self.nodes: list[RayNode] = []
        self.address = ""
        # Environment for the nodes and for any driver process of this cluster.
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        if auth == "token":
            self.env = {k: v for k, v in self.env.items() if not k.startswith("RAY_AUTH_")}
            self.env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        elif auth == "this-process":
            # Unset means "disabled" for a driver given an address; say so to the nodes too.
            self.env["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE") or "disabled"
        else:
            raise ValueError(auth)

    def start_head(self, num_cpus: int = 2) -> str:
        head = RayNode(self.temp_dir, self.env, head=True, num_cpus=num_cpus)
        self.nodes.append(head)
        head.wait_started()
        with open(os.path.join(self.temp_dir, "ray_current_cluster")) as fh:
            self.address = fh.read().strip()
        port = self.address.rsplit(":", 1)[1]
        self.address = f"127.0.0.1:{port}"
        return self.address

    def add_node(self, num_cpus: int = 2) -> None:
        node = RayNode(self.temp_dir, self.env, head=False, address=self.address, num_cpus=num_cpus)
        self.nodes.append(node)
        node.wait_started()

    def stop(self) -> None:
        stragglers = []
        for node in reversed(self.nodes):  # worker nodes first, the head (GCS) last
            stragglers += node.stop()
        left = [pid for node in self.nodes for pid in _session_pids(node.proc.pid)]
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        assert not left, f"Ray processes survived teardown: {left}"
        if stragglers:
            print(f"teardown SIGKILLed stragglers: {stragglers}", file=sys.stderr)

    def describe(self) -> str:
        return "\n".join(f"--- {n.log_path}\n{n.log_text()[-3000:]}" for n in self.nodes)


@pytest.fixture
def make_cluster():
    """Fresh clusters, stopped at teardown; no global Ray connection in this process before or after."""
    ray.shutdown()
    clusters: list[Cluster] = []

    def make(auth: str) -> Cluster:
        clusters.append(Cluster(auth))
        return clusters[-1]

    try:
        yield make
    finally:
        ray.shutdown()
        errors = []
        for cluster in clusters:
            try:
                cluster.stop()
            except Exception as exc:  # noqa: BLE001 - stop every cluster, then report
                errors.append(exc)
        if errors:
            raise errors[0]


# Run in a separate driver process (it needs this cluster's token): what the GCS knows about a job.
JOB_QUERY = """import json, sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False)
from ray._private import state
pid = int(sys.argv[2])
deadline = time.monotonic() + 20  # the GCS marks a job finished once its driver has disconnected
while True:
    jobs = [j for j in state.jobs() if j["DriverPid"] == pid]
    if (jobs and all(j["IsDead"] for j in jobs)) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
ids = {j["JobID"] for j in jobs}
actors = [{"class": a["ActorClassName"], "node": a["Address"]["NodeID"], "state": a["State"]}
          for a in state.actors().values() if a["JobID"] in ids]
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
print("RESULT " + json.dumps({"jobs": [{"dead": j["IsDead"], "id": j["JobID"]} for j in jobs],
                              "actors": actors, "nodes": nodes}))
"""


def _wait_for_nodes(count: int, timeout: float = START_TIMEOUT_S) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [n for n in ray.nodes() if n["Alive"]]
        if len(alive) >= count or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


@pytest.mark.slow
def test_cli_train_runs_on_an_existing_ray_cluster(make_cluster, tmp_path):
    ray_cluster = make_cluster("token")
    address = ray_cluster.start_head(num_cpus=2)
    config_path = tmp_path / "digits.toml"
    config_path.write_text(CONFIG)
    out = tmp_path / "run"

    # The cluster's env: its token, and no RAY_ADDRESS (the address must come from --address).
    proc = subprocess.Popen([OSTRACON, "train", "-c", str(config_path), "-o", str(out), "--address", address,
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ray_cluster.env)
    try:
        output, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"ostracon train timed out:\n{output}\n{ray_cluster.describe()}")
    assert proc.returncode == 0, f"{output}\n{ray_cluster.describe()}"

    # Outputs: accuracy well above chance (10 classes), one metrics line per evaluation.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 20
    assert summary["honest_test_accuracy"]["min"] > 0.3, summary
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [0, 10, 20]
    assert all(m["failures"] == [] for m in metrics), metrics
    assert sorted(metrics[-1]["accuracy"]) == ["0", "1", "2"]  # worker 3 is the Byzantine one

    # The job really ran on *this* cluster: its GCS recorded one finished driver with the CLI's pid,
    # and that job's four worker actors, all placed on this cluster's (only) node.
    query = subprocess.run([sys.executable, "-c", JOB_QUERY, address, str(proc.pid)], capture_output=True,
                           text=True, env=ray_cluster.env, timeout=120)
    lines = [x for x in query.stdout.splitlines() if x.startswith("RESULT ")]
    assert query.returncode == 0 and lines, query.stdout + query.stderr
    seen = json.loads(lines[-1][len("RESULT "):])
    assert len(seen["nodes"]) == 1, seen
    assert len(seen["jobs"]) == 1 and seen["jobs"][0]["dead"], seen  # the driver finished and disconnected
    workers = [a for a in seen["actors"] if a["class"].endswith("WorkerActor")]
    assert len(workers) == 4, seen
    assert {a["node"] for a in workers} == set(seen["nodes"]), seen

    # Same config and seed on the in-process backend: bit-identical models (docs/design.md, invariant 1),
    # now across real processes that joined an external cluster.
    local = train(load(config_path), progress=False)
    assert local.summary["worker_digests"] == summary["worker_digests"]


@pytest.mark.slow
def test_spread_placement_uses_both_nodes(make_cluster, tmp_path):
    # The driver is this process: the cluster takes this process's auth settings (see the module docstring).
    ray_cluster = make_cluster("this-process")
    # Each node alone could host all four 1-CPU workers: only SPREAD puts them on both.
    address = ray_cluster.start_head(num_cpus=4)
    ray_cluster.add_node(num_cpus=4)
    ray.init(address=address, log_to_driver=False)
    nodes = _wait_for_nodes(2)
    cluster_nodes = {n["NodeID"] for n in nodes}
    assert len(cluster_nodes) == 2, f"{nodes}\n{ray_cluster.describe()}"
    ray.shutdown()  # let the backend make (and own) the connection from backend.address

    config = load(_write(tmp_path / "digits.toml", CONFIG),
                  {"backend.name": "ray", "backend.address": address, "backend.placement": "spread",
                   "backend.num_cpus": 1.0})
    placed: dict[int, str] = {}

    def record_nodes(t, backend):
        if not placed:
            placed.update(backend.nodes(sorted(backend.actors)))

    result = train(config, tmp_path / "run", progress=False, hooks=RoundHooks(record_nodes))

    assert sorted(placed) == [0, 1, 2, 3]
    assert set(placed.values()) == cluster_nodes, placed
    per_node = sorted(list(placed.values()).count(n) for n in cluster_nodes)
    assert per_node == [2, 2], placed
    assert result.summary["honest_test_accuracy"]["min"] > 0.3, result.summary
    assert [m["round"] for m in result.metrics] == [0, 10, 20]
    # Spread over two nodes, still bit-identical to the in-process backend.
    local = train(load(tmp_path / "digits.toml"), progress=False)
    assert local.summary["worker_digests"] == result.summary["worker_digests"]


def _write(path, text: str):
    path.write_text(text)
    return path
