"""A Ray run keeps the terminal clean: only ostracon's own lines, while Ray's real messages still show."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

from ostracon.cluster.execution.ray_logs import relay, stderr_relayed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OSTRACON = os.path.join(os.path.dirname(sys.executable), "ostracon")
OSTRACON_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ostracon(\.[\w.]+)?: ")


def test_ray_run_of_the_digits_example_prints_only_ostracons_lines(tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_BACKEND_LOG_LEVEL")}
    done = subprocess.run(
        [OSTRACON, "train", "-c", os.path.join(REPO, "examples", "digits_sisa.toml"), "-o", str(out),
         "--backend", "ray", "--set", "training.rounds=8", "--set", "training.eval_every=4", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    noise = [line for line in done.stderr.splitlines() if not OSTRACON_LINE.match(line)]
    assert noise == [], done.stderr
    assert "ray backend: 8 worker actors ready" in done.stderr
    assert done.stdout.splitlines() == [line for line in done.stdout.splitlines() if line.startswith("trained ")]
    assert len(done.stdout.splitlines()) == 1 and "\x1b" not in done.stdout + done.stderr


def test_known_ray_noise_goes_to_debug_and_anything_else_is_a_warning(caplog):
    caplog.set_level(logging.DEBUG, logger="ostracon")
    relay("\x1b[33m(raylet)\x1b[0m WARNING: 8 PYTHON worker processes have been started on node: abc")
    relay("[2026-01-01 00:00:00,000 E 1 1] core_worker.cc:2465: Actor with class name: 'WorkerActor' and ID: 'x' "
          "has constructor arguments in the object store and max_restarts > 0. If ...")
    relay("\x1b[33m(raylet)\x1b[0m A worker died or was killed while executing a task by an unexpected system error")
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "ostracon.cluster.execution.ray_logs"]
    assert [lvl for lvl, _ in levels] == [logging.DEBUG, logging.DEBUG, logging.WARNING]
    assert all("\x1b" not in msg for _, msg in levels)
    assert levels[2][1] == "ray: (raylet) A worker died or was killed while executing a task by an unexpected " \
                           "system error"


def test_stderr_written_at_the_file_descriptor_is_relayed_not_lost(caplog):
    caplog.set_level(logging.DEBUG, logger="ostracon")
    with stderr_relayed():
        os.write(2, b"[E core_worker.cc:1] something really failed\n")
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "ostracon.cluster.execution.ray_logs"]
    assert messages == [(logging.WARNING, "ray: [E core_worker.cc:1] something really failed")]
