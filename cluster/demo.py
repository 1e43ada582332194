"""``ostracon demo``: the main job, through the service, in one command.

1. start a local Ray runtime inside this process (sized for a 2-core laptop, no dashboard, quiet);
2. train on scikit-learn's digits: 2 isolated SISA groups of 5 MoNNA workers on Ray actors, one
   Byzantine worker per group running the optimised ALIE attack, 4 slices (``demo.toml``);
3. serve the state with the coordinator (a warm ``Deployment`` behind a ``CoordinatorServer`` on a free
   loopback port, with a generated token) and, through the real gRPC client:
   a. delete a few ids exactly, killing one worker actor in the middle of the replay (Ray restarts it;
      the stage is redone and the deletion still ends exact),
   b. delete a few ids ``approximate_then_exact`` (the approximate model is served at once, then the
      exact replay replaces it; the certificate records both phases),
   c. send two malformed requests and show the gRPC status codes they got,
   d. ``Predict`` a few test rows;
4. close the coordinator, audit the state directory with ``verify`` (a retrain from scratch, here in
   this process: the in-process backend is bit-identical to Ray) and print a short report.

``--backend local`` runs the same flow on in-process workers (no actor to kill: step 3a skips the
fault). ``--keep-serving`` serves the state again after the report, until Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .config import Config, load
from .execution.backend import Backend
from .execution.hooks import Hooks
from .execution.plan import make_plan, stage_rounds
from .vocabulary import DeletionMode, OperationState

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.toml")  # ships with the package
TOKEN_FILE = "demo-token"
MALFORMED: tuple[tuple[str, list[str]], ...] = (("an unknown sample id", ["no-such-sample"]),
                                                ("an empty id list", []))
PREDICT_ROWS = 8
CALL_TIMEOUT_S = 300.0  # a deletion's watch waits this long between events (a replay on 2 busy cores)


@dataclass
class Demo:
    """What one run of the demo needs and what it found along the way."""

    config: Config
    outdir: str
    state_dir: str
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    token_file: str = ""
    address: str = ""
    killer: KillOnce | None = None
    ops: list[dict] = field(default_factory=list)  # {"title", "op", "cert"}
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (what, code name, details)
    predicted: tuple = ()

    @property
    def on_ray(self) -> bool:
        return self.config.backend.name == "ray"


def say(text: str) -> None:
    print(text, flush=True)


# ----- 1. the Ray runtime -----------------------------------------------------------------------------
def start_ray() -> None:
    """A fresh local Ray runtime in this process (never an existing cluster): no dashboard, Ray's logs
    routed through ostracon's (``-v`` shows them). Training and the coordinator share it."""
    import ray

    from .execution.ray_logs import ray_logging_level, route_driver_messages

    cpus = max(2, min(8, os.cpu_count() or 2))  # the actors ask for a share each: 10 of them fit in 2 CPUs
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             logging_level=ray_logging_level())
    route_driver_messages()
    say(f"    local Ray runtime started ({cpus} CPUs, no dashboard)")


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


# ----- 2. training --------------------------------------------------------------------------------------
def train_state(demo: Demo) -> None:
    from .execution.training import train

    c = demo.config
    b = c.byzantine
    say(f"2/5 training on digits: {c.unlearning.groups} groups x {c.training.workers} MoNNA workers "
        f"({b.count} Byzantine '{b.behaviour}' per group, f = {c.training.f}), {c.unlearning.slices} slices, "
        f"{c.training.rounds} rounds, backend {c.backend.name}")
    began = time.perf_counter()
    result = train(c, demo.state_dir, progress=False)
    acc = result.summary["honest_test_accuracy"]
    say(f"    trained in {time.perf_counter() - began:.0f}s: honest test accuracy min {acc['min']:.3f} "
        f"mean {acc['mean']:.3f}; ensemble {result.summary['ensemble_test_accuracy']:.3f} -> {demo.state_dir}")


def pick_ids(plan, group: int, stage: int, count: int, seed: int) -> list[str]:
    """``count`` training ids held by honest workers of ``group`` in slice ``stage`` (a late slice: a
    short replay)."""
    ids = sorted(i for i, (g, w, s) in plan.placement.items()
                 if g == group and s == stage and not plan.specs[w].is_byzantine)
    return [ids[k] for k in sorted(np.random.default_rng(seed).choice(len(ids), size=count, replace=False))]


# ----- 3. the coordinator and the client -----------------------------------------------------------------
class KillOnce(Hooks):
    """The deployment's hooks: once armed, kill one worker's actor at the ``at``-th replay round
    (``Backend.kill``: Ray restarts it, the group's stage is redone)."""

    def __init__(self, worker: int, at: int):
        self.worker, self.at = worker, at
        self.armed, self.seen = False, 0
        self.killed_at: int | None = None

    def on_round(self, t: int, backend: Backend) -> None:
        if not self.armed:
            return
        self.seen += 1
        if self.seen == self.at:
            self.armed, self.killed_at = False, t
            backend.kill(self.worker)


def write_token(demo: Demo) -> None:
    """The token, readable by this user only, for ``ostracon delete --token-file``."""
    demo.token_file = os.path.join(demo.state_dir, TOKEN_FILE)
    fd = os.open(demo.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(demo.token + "\n")
    os.chmod(demo.token_file, 0o600)


def start_coordinator(demo: Demo, port: int = 0, hooks: Hooks | None = None):
    """(deployment, server): the state served warm on 127.0.0.1 (``port`` 0: a free one), token required."""
    from .coordinator.deployment import Deployment
    from .service.server import CoordinatorServer

    deployment = Deployment(demo.state_dir, hooks=hooks)
    deployment.start()
    try:
        server = CoordinatorServer(deployment, host="127.0.0.1", port=port, token=demo.token)
    except Exception:
        deployment.close()
        raise
    server.start()
    server.mark_serving()
    demo.address = server.address
    return deployment, server


def stop_coordinator(deployment, server) -> None:
    try:
        server.stop()
    finally:
        deployment.close(drain=True)


def delete(demo: Demo, client, title: str, ids: list[str], mode: DeletionMode) -> None:
    """One deletion through the client, followed to its end; its certificate is kept for the report."""
    began = time.perf_counter()
    op = client.delete(ids, mode=mode)
    say(f"    {op['id']} {op['state']}: {title}: {len(ids)} id(s) ({', '.join(ids)}), mode {mode}")
    for _, event in client.watch(op["id"], timeout=CALL_TIMEOUT_S):
        if event["model_version"] != op["model_version"] and event["state"] == OperationState.RUNNING:
            say(f"    {event['id']} serves model version {event['model_version']} while it runs: {event['message']}")
        op = event
    say(f"    {op['id']} {op['state']} after {time.perf_counter() - began:.1f}s: {op['message']}")
    if op["state"] != OperationState.SUCCEEDED:
        raise RuntimeError(f"demo: {title} ended {op['state']}: {op['message']}")
    demo.ops.append({"title": title, "op": op, "cert": client.certificate(op["id"])})


def refuse(demo: Demo, client, what: str, ids: list[str]) -> None:
    from .service.client import CoordinatorError

    try:
        op = client.delete(ids, mode=DeletionMode.EXACT)
    except CoordinatorError as exc:
        demo.refused.append((what, exc.code().name, exc.details()))
        say(f"    {what}: refused with {exc.code().name}")
        return
    raise RuntimeError(f"demo: the coordinator accepted {what} ({op['id']})")


def use_the_service(demo: Demo, plan) -> None:
    from .service.client import CoordinatorClient

    if demo.on_ray:  # the exact deletion below replays stages 2 and 3 of group 0: kill in the middle of stage 3
        rounds = stage_rounds(demo.config)
        demo.killer = KillOnce(worker=plan.honest(0)[-1], at=rounds[2] + rounds[3] // 2)
    say("3/5 coordinator: the deployment starts the workers once and keeps them warm; gRPC on a free loopback "
        "port, bearer token required")
    deployment, server = start_coordinator(demo, hooks=demo.killer)
    say(f"    serving on {demo.address} (backend {deployment.backend_name}; token in {demo.token_file})")
    try:
        with CoordinatorClient(demo.address, token=demo.token, timeout=CALL_TIMEOUT_S) as client:
            status = client.status()
            say(f"    {len(status['workers'])} workers alive, model version {status['model_version']}")
            if demo.killer is not None:
                demo.killer.armed = True
                fault = (f"; worker {demo.killer.worker}'s actor is killed after the replay's "
                         f"{demo.killer.at}th round (mid stage 3)")
            else:
                fault = "; backend local: in-process workers, no actor to kill (fault step skipped)"
            say(f"  a) exact deletion{fault}")
            delete(demo, client, "exact deletion", pick_ids(plan, 0, 2, 3, seed=1), DeletionMode.EXACT)
            say("  b) approximate_then_exact deletion (method "
                f"{demo.config.unlearning.method}, the configured default)")
            delete(demo, client, "approximate_then_exact deletion", pick_ids(plan, 1, 3, 3, seed=2),
                   DeletionMode.APPROXIMATE_THEN_EXACT)
            say("  c) malformed requests")
            for what, ids in MALFORMED:
                refuse(demo, client, what, ids)
            say("  d) Predict")
            x, truth = plan.test_features[:PREDICT_ROWS], plan.test_labels[:PREDICT_ROWS]
            labels, _, version = client.predict(x)
            demo.predicted = (labels.tolist(), np.asarray(truth).tolist(), version)
            restarts = sum(w["restarts"] for w in client.status()["workers"])
            say(f"    {PREDICT_ROWS} test rows answered by model version {version}; worker restarts seen: "
                f"{restarts}")
    finally:
        stop_coordinator(deployment, server)


# ----- 4. audit and report --------------------------------------------------------------------------------
def audit(demo: Demo) -> dict:
    """``verify`` after the coordinator released the lock: a retrain from scratch in this process."""
    from .unlearning import verify_state_dir

    say("4/5 verify: ledger, stores, certificates, checkpoints, then a retrain from scratch without the "
        "deleted ids (in process: bit-identical to Ray)")
    began = time.perf_counter()
    report = verify_state_dir(demo.state_dir, overrides={"backend.name": "local"}, allow_approximate=False)
    say(f"    verified in {time.perf_counter() - began:.0f}s")
    return report


def version_lines(state_dir: str) -> list[str]:
    """Accuracy of every published model version, from the ledger."""
    from .storage.ledger import open_ledger

    with open_ledger(state_dir, readonly=True) as ledger:
        modes = {r.id: r.mode for r in ledger.requests()}
        versions = ledger.versions()
    lines = []
    for version, request_id, record in versions:
        if request_id is None:
            what = "trained"
        elif record.phase is not None:
            what = f"request {request_id} ({modes.get(request_id)}): approximate phase ({record.phase['method']})"
        else:
            what = f"request {request_id} ({modes.get(request_id)}): exact"
        e = record.evaluation
        lines.append(f"  v{version}: ensemble {e['ensemble_test_accuracy']:.3f}, honest mean "
                     f"{e['honest_test_accuracy']['mean']:.3f}  <- {what}")
    return lines


def certificate_lines(title: str, op: dict, cert: dict, killer: KillOnce | None) -> list[str]:
    full = cert["full_retrain_gradient_evaluations"]
    lines = [f"  {op['id']} {title}: {len(cert['deleted'])} id(s), model version {cert['model_version_before']} "
             f"-> {cert['model_version_after']}; certificate mode {cert['mode']} "
             f"(requested {cert.get('requested_mode', cert['mode'])}), cost ratio {cert['cost_ratio']:.3f} of a full "
             f"retrain, {cert['wall_time_s']:.1f}s"]
    for n, phase in enumerate(cert.get("phases", []), start=1):
        cost = phase.get("gradient_evaluations", 0) / max(1, full)
        method = f" ({phase['method']})" if phase.get("method") else ""
        wall = f", {phase['wall_time_s']:.1f}s" if "wall_time_s" in phase else ""
        outcome = f": {phase['outcome']}" if phase.get("outcome") else ""
        version = f" -> version {phase['model_version_after']}" if phase.get("model_version_after") else ""
        lines.append(f"      phase {n} {phase['mode']}{method}{version}, cost ratio {cost:.3f}{wall}{outcome}")
    for g, row in cert.get("groups", {}).items():
        if "replayed_stages" in row:
            lines.append(f"      group {g}: replayed stages {row['replayed_stages']}")
    if cert.get("failures") and killer is not None and killer.killed_at is not None:
        lines.append(f"      worker {killer.worker}'s actor was killed after round {killer.killed_at} and restarted "
                     "by Ray; the certificate records what was survived:")
    for failure in cert.get("failures", []):
        where = f"round {failure['round']}, worker {failure['worker']}: " if failure.get("round", -1) >= 0 else ""
        lines.append(f"        {where}{failure['reason']}")
    return lines


def report(demo: Demo, verified: dict) -> None:
    from .unlearning import format_report

    say("5/5 report")
    say("model versions (test accuracy):")
    for line in version_lines(demo.state_dir):
        say(line)
    say("certificates:")
    for row in demo.ops:
        for line in certificate_lines(row["title"], row["op"], row["cert"], demo.killer):
            say(line)
    say("refused requests:")
    for what, code, details in demo.refused:
        say(f"  {what}: {code}: {details}")
    labels, truth, version = demo.predicted
    say(f"Predict (model version {version}): labels {labels}, true {truth}")
    say("verify:")
    for line in format_report(verified).splitlines():
        say(f"  {line}")


# ----- --keep-serving ----------------------------------------------------------------------------------
def keep_serving(demo: Demo, port: int, plan) -> None:
    """Serve the state again (verify needed its lock) until Ctrl-C, on the same port if it is free."""
    from .errors import StateDirError

    say("--keep-serving: starting the coordinator again (verify needed the state directory's lock)")
    try:
        deployment, server = start_coordinator(demo, port=port)
    except StateDirError:
        deployment, server = start_coordinator(demo, port=0)
    ids = ",".join(pick_ids(plan, 0, 3, 2, seed=3))
    say(f"serving on {demo.address} until Ctrl-C; try, from another shell:")
    say(f"  ostracon status --target {demo.address} --token-file {demo.token_file}")
    say(f"  ostracon delete --target {demo.address} --token-file {demo.token_file} --ids {ids} --wait")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait()
        say("stopping the coordinator")
    finally:
        stop_coordinator(deployment, server)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ----- the whole story -------------------------------------------------------------------------------------
def run_demo(outdir: str | None = None, backend: str = "ray", *, keep_serving_after: bool = False,
             clean: bool = False, overrides: dict | None = None) -> int:
    """Run the demo; 0 when ``verify`` passes, 1 when it fails. ``overrides``: config keys (tests)."""
    chosen_by_user = outdir is not None
    outdir = os.path.abspath(outdir) if outdir is not None else tempfile.mkdtemp(prefix="ostracon-demo-")
    created = not os.path.exists(outdir) or not chosen_by_user
    state_dir = os.path.join(outdir, "run")
    config = load(DEMO_CONFIG, {**(overrides or {}), "backend.name": backend})
    demo = Demo(config, outdir, state_dir)
    began = time.perf_counter()
    try:
        if demo.on_ray:
            say("1/5 starting a local Ray runtime in this process")
            start_ray()
        else:
            say("1/5 backend local: in-process workers, no Ray runtime")
        train_state(demo)
        write_token(demo)
        plan = make_plan(config)
        use_the_service(demo, plan)
        port = int(demo.address.rsplit(":", 1)[1])
        verified = audit(demo)
        report(demo, verified)
        say(f"demo {'OK' if verified['ok'] else 'failed'} in {time.perf_counter() - began:.0f}s: "
            + ("every deletion ended exact and verify reproduced the served models" if verified["ok"]
               else "verify found problems (above)"))
        if keep_serving_after:
            keep_serving(demo, port, plan)
    finally:
        if demo.on_ray:
            stop_ray()
        if clean:
            shutil.rmtree(outdir if created else state_dir, ignore_errors=True)
    if clean:
        say(f"removed {outdir if created else state_dir} (--clean)")
    else:
        say(f"kept the run in {outdir} (state directory {state_dir}: ledger, checkpoints, certificates, "
            "token); pass --clean to remove it")
    return 0 if verified["ok"] else 1

