"""``ostracon demo``: the main job through the service, end to end.

Fast (in-process workers, 40 rounds): the whole flow through a real gRPC server and client, the report,
the folder it keeps, ``--keep-serving`` answering the commands it prints. Slow: the default demo, as a
user runs it, on a local Ray runtime with a worker actor killed mid-replay.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from ostracon.cluster import demo
from ostracon.cluster.cli import main
from ostracon.cluster.demo import run_demo

OSTRACON = os.path.join(os.path.dirname(sys.executable), "ostracon")
FAST = {"training.rounds": 40, "training.eval_every": 20}  # the demo's structure, fewer rounds


def assert_report(out: str) -> None:
    """What every run of the demo reports, whatever the backend."""
    assert "certificate mode exact (requested exact)" in out, out
    assert "certificate mode exact (requested approximate_then_exact)" in out, out
    assert "phase 1 approximate (salun)" in out and "phase 2 exact" in out, out
    assert "an unknown sample id: NOT_FOUND: " in out and "an empty id list: INVALID_ARGUMENT: " in out, out
    assert "Predict (model version " in out, out
    assert "group 0: MATCH" in out and "group 1: MATCH" in out, out
    assert "verified: model version " in out and "demo OK in " in out, out


def test_local_demo_runs_the_whole_flow_through_the_service_and_keeps_its_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp puts the demo's folder
    assert run_demo(backend="local", overrides=FAST) == 0
    out = capsys.readouterr().out
    assert_report(out)
    assert "no actor to kill" in out and "serving on 127.0.0.1:" in out
    [kept] = [d for d in tmp_path.iterdir() if d.name.startswith("ostracon-demo-")]
    assert out.strip().splitlines()[-1].startswith(f"kept the run in {kept} "), out
    state = kept / "run"
    assert (state / "state.json").is_file() and len(list((state / "certificates").glob("*.json"))) == 2
    token = state / demo.TOKEN_FILE
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text().strip()) >= 32


def test_keep_serving_answers_the_commands_it_prints_until_interrupted(tmp_path):
    outdir = tmp_path / "demo"
    script = ("import sys; from ostracon.cluster.demo import run_demo; "
              f"sys.exit(run_demo(sys.argv[1], 'local', keep_serving_after=True, clean=True, overrides={FAST!r}))")
    proc = subprocess.Popen([sys.executable, "-c", script, str(outdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        printed = []
        for line in proc.stdout:
            printed.append(line)
            if "ostracon delete --target" in line:
                break
        commands = {shlex.split(line)[1]: shlex.split(line) for line in printed
                    if line.strip().startswith("ostracon ")}
        assert set(commands) == {"status", "delete"}, "".join(printed)
        status = subprocess.run([OSTRACON, *commands["status"][1:]], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "10/10 workers alive" in status.stdout, status.stderr
        deleted = subprocess.run([OSTRACON, *commands["delete"][1:]], capture_output=True, text=True, timeout=120)
        assert deleted.returncode == 0 and "SUCCEEDED" in deleted.stdout, deleted.stderr
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopping the coordinator" in rest and f"removed {outdir} (--clean)" in rest, rest
    assert not outdir.exists()


def test_demo_command_line_defaults_to_ray_and_passes_its_flags(monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda *args, **kwargs: calls.append((args, kwargs)) or 0)
    ostracon_log = logging.getLogger("ostracon")
    level = ostracon_log.level
    try:
        assert main(["demo"]) == 0
        assert main(["demo", "--backend", "local", "--keep-serving", "--clean", "-o", "somewhere"]) == 0
    finally:
        ostracon_log.setLevel(level)
    assert calls == [((None,), {"backend": "ray", "keep_serving_after": False, "clean": False}),
                     (("somewhere",), {"backend": "local", "keep_serving_after": True, "clean": True})]


@pytest.mark.slow
def test_default_demo_on_ray_kills_a_worker_mid_replay_and_still_verifies(tmp_path):
    outdir = tmp_path / "demo"
    began = time.perf_counter()
    done = subprocess.run([OSTRACON, "demo", "-o", str(outdir), "--clean"], capture_output=True, text=True,
                          timeout=600)
    took = time.perf_counter() - began
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert_report(out)
    assert "local Ray runtime started" in out and "(backend ray;" in out, out
    assert "actor was killed after round" in out and "restarted by Ray" in out, out
    assert "redone from its start after a worker failure" in out, out
    assert "approximate phase (salun)" in out, out  # the approximate version was published, then replaced
    assert f"removed {outdir} (--clean)" in out and not outdir.exists(), out
    print(f"ostracon demo on Ray took {took:.0f}s")
