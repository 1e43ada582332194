"""Errors a user can act on: every case is one line on stderr naming the file or key, exit 2, nothing created.

Table-driven over the real command line (``main``), on real files: each case builds its inputs in a
temporary directory, runs the command, and checks the exit code, that the last stderr line is the one
error line and names what is wrong, and that the output directory / state directory is as it was.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from ostracon.cluster.cli import main, user_error_message
from ostracon.cluster.errors import ConfigError, DataError
from ostracon.nodes.data import load_dataset

BIN = os.path.dirname(sys.executable)
OSTRACON = os.path.join(BIN, "ostracon")

CONFIG = """
seed = 1
[data]
source = "npz"
path = "{path}"
[model]
name = "mlp"
params = {{ hidden = 16 }}
[training]
workers = 4
f = 1
rounds = 8
eval_every = 4
[byzantine]
count = 1
behaviour = "sign_flip"
[unlearning]
groups = 2
slices = 2
"""


def _digits_npz(path, rows=None):
    digits = load_dataset("digits")
    n = len(digits) if rows is None else rows
    np.savez(path, X=digits.features[:n], y=digits.labels[:n], ids=np.array([f"r{i}" for i in range(n)]))
    return path


def _config(tmp_path, data_path) -> str:
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(path=data_path))
    return str(config)


@dataclass
class Case:
    name: str
    make: Callable  # tmp_path -> argv after "train -c CONFIG -o OUT" (or a full argv for other commands)
    expect: tuple  # substrings of the error line
    code: int = 2


def _data_file(content: bytes | None, name: str):
    def make(tmp_path):
        path = tmp_path / name
        if content is None:
            _digits_npz(path)
        else:
            path.write_bytes(content)
        return ["train", "-c", _config(tmp_path, path)]
    return make


def _good_config(*extra):
    def make(tmp_path):
        return ["train", "-c", _config(tmp_path, _digits_npz(tmp_path / "digits.npz")), *extra]
    return make


def _empty_npz(tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path, X=np.zeros((0, 64), np.float32), y=np.zeros(0, np.int64))
    return ["train", "-c", _config(tmp_path, path)]


def _six_rows(tmp_path):
    return ["train", "-c", _config(tmp_path, _digits_npz(tmp_path / "six.npz", rows=6)), "--set", "training.workers=8",
            "--set", "training.f=1"]


def _config_is_directory(tmp_path):
    (tmp_path / "confdir").mkdir()
    return ["train", "-c", str(tmp_path / "confdir")]


def _config_is_binary(tmp_path):
    (tmp_path / "garbage.toml").write_bytes(bytes(range(256)))
    return ["train", "-c", str(tmp_path / "garbage.toml")]


TRAIN_CASES = [
    Case("zero-byte data file", _data_file(b"", "zero.npz"), ("zero.npz", "empty file")),
    Case("text file as npz", _data_file(b"a,b,c\n1,2,3\n", "notes.npz"), ("notes.npz", "not an .npz archive")),
    Case("empty npz", _empty_npz, ("empty.npz", "no samples")),
    Case("config is a directory", _config_is_directory, ("confdir", "is a directory")),
    Case("config is binary", _config_is_binary, ("garbage.toml", "not a text file")),
    Case("model.params wrong type", _good_config("--set", 'model.params={hidden="x"}'), ("model.params", "hidden")),
    Case("model.params unknown key", _good_config("--set", "model.params={bogus=1}"), ("model.params", "bogus")),
    Case("lr inf", _good_config("--set", "training.lr=inf"), ("training.lr", "finite")),
    Case("lr nan", _good_config("--set", "training.lr=nan"), ("training.lr", "finite")),
    Case("momentum nan", _good_config("--set", "training.momentum=nan"), ("training.momentum", "finite")),
    Case("weight_decay inf", _good_config("--set", "training.weight_decay=inf"), ("training.weight_decay", "finite")),
    Case("test_fraction nan", _good_config("--set", "data.test_fraction=nan"), ("data.test_fraction", "finite")),
    Case("deadline -inf", _good_config("--set", "training.round_deadline_s=-inf"), ("training.round_deadline_s",)),
    Case("byzantine.params wrong type", _good_config("--set", 'byzantine.params={tau="x"}',
                                                     "--set", "byzantine.behaviour=alie"), ("byzantine.params",)),
    Case("fewer samples than workers", _six_rows, ("16 workers", "training sample", "training.workers = 8")),
    Case("unreachable Ray address", _good_config("--address", "127.0.0.1:1"), ("backend.address", "127.0.0.1:1")),
    Case("missing data file", _good_config("--set", "data.path='/nonexistent/records.npz'"),
         ("data.path", "/nonexistent/records.npz")),
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c.name for c in TRAIN_CASES])
def test_train_error_is_one_line_naming_the_problem_and_creates_nothing(case, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([*case.make(tmp_path), "-o", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == case.code, err
    _assert_one_error_line(err, case.expect)
    assert not out.exists()


def _ray_cluster_running() -> bool:
    from ray._private.services import find_gcs_addresses

    return bool(find_gcs_addresses())


def test_address_auto_without_a_cluster_names_the_address(tmp_path, capsys):
    if _ray_cluster_running():
        pytest.skip("a Ray cluster runs on this machine: 'auto' would find it")
    out = tmp_path / "out"
    argv = _good_config("--address", "auto")(tmp_path)
    assert main([*argv, "-o", str(out)]) == 2
    _assert_one_error_line(capsys.readouterr().err, ("backend.address = 'auto'", "no running Ray cluster"))
    assert not out.exists()


def test_output_directory_that_cannot_be_created_is_one_line(tmp_path, capsys):
    out = "/sys/ostracon-cannot-write-here"  # sysfs refuses new entries, even to root
    assert main([*_good_config()(tmp_path), "-o", out, "--no-progress"]) == 2
    _assert_one_error_line(capsys.readouterr().err, (out,))
    assert not os.path.exists(out)


def _assert_one_error_line(err: str, expect: tuple) -> None:
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("ostracon: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err, err
    for text in expect:
        assert text in errors[0], (text, err)


# ----- unlearn: the request is refused before anything changes


@pytest.fixture(scope="module")
def trained_state(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    state = root / "state"
    assert main(["train", "-c", _config(root, _digits_npz(root / "digits.npz")), "-o", str(state),
                 "--no-progress"]) == 0
    return state


def _ids_file(content: bytes, name: str):
    def make(tmp_path, state):
        (tmp_path / name).write_bytes(content)
        return ["--ids-file", str(tmp_path / name)]
    return make


UNLEARN_CASES = [
    Case("binary ids file", _ids_file(b"r1\n\xff\xfe\x00garbage\n", "garbage.bin"), ("garbage.bin", "not UTF-8")),
    Case("control characters in ids file", _ids_file(b"r1\n\x00\x01\x02\n", "nul.txt"),
         ("nul.txt", "line 2", "control characters")),
    Case("missing ids file", lambda tmp_path, state: ["--ids-file", str(tmp_path / "missing.txt")],
         ("missing.txt", "no such file")),
    Case("ids-json not JSON", lambda tmp_path, state: ["--ids-json", "[r1"], ("--ids-json", "not valid JSON")),
    Case("ids-json not strings", lambda tmp_path, state: ["--ids-json", "[1, 2]"], ("--ids-json", "list of strings")),
    Case("--out is a directory", lambda tmp_path, state: ["--ids", "r1", "--out", str(tmp_path)],
         ("--out", "is a directory")),
    Case("unknown ids", lambda tmp_path, state: ["--ids", "r1,nobody"], ("nobody",)),
]


@pytest.mark.parametrize("case", UNLEARN_CASES, ids=[c.name for c in UNLEARN_CASES])
def test_unlearn_error_is_one_line_and_changes_nothing(case, trained_state, tmp_path, capsys):
    before = (trained_state / "state.json").read_bytes()
    code = main(["unlearn", "--state-dir", str(trained_state), *case.make(tmp_path, trained_state)])
    err = capsys.readouterr().err
    assert code == case.code, err
    _assert_one_error_line(err, case.expect)
    assert (trained_state / "state.json").read_bytes() == before
    assert not (trained_state / "certificates").exists()


def test_read_only_state_directory_is_refused_before_any_change(capsys):
    # sysfs is read-only even to root: the writability check must refuse it before reading anything.
    assert main(["unlearn", "--state-dir", "/sys/kernel", "--ids", "r1"]) == 2
    _assert_one_error_line(capsys.readouterr().err, ("--state-dir /sys/kernel", "not writable"))


# ----- what is and is not a user error


def test_only_ostracon_and_path_errors_are_user_errors():
    assert user_error_message(ConfigError("training.lr must be > 0")) == "training.lr must be > 0"
    assert "records.npz" in user_error_message(DataError("data.path: records.npz\nholds no samples"))
    assert user_error_message(FileNotFoundError(2, "No such file or directory", "/x/y.toml")) == \
        "No such file or directory: /x/y.toml"
    assert user_error_message(PermissionError(13, "Permission denied", "/state")) == "Permission denied: /state"
    for bug in (KeyError("group_digests"), ValueError("nna: pivot must be finite"), TypeError("bad operand"),
                RuntimeError("boom"), ZeroDivisionError()):
        assert user_error_message(bug) is None, bug


def test_verbose_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    (tmp_path / "confdir").mkdir()
    assert main(["-v", "train", "-c", str(tmp_path / "confdir"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("ostracon: error:")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# "ignored": how a non-interactive shell starts `ostracon train ... &` (and nohup): the process inherits
# SIGINT ignored, and the CLI must restore the default handler for Ctrl-C / kill -INT to work.
@pytest.mark.parametrize("inherited_sigint", ["default", "ignored"])
def test_ctrl_c_during_train_is_one_line_and_exit_130(tmp_path, inherited_sigint):
    config = _config(tmp_path, _digits_npz(tmp_path / "digits.npz"))
    out = tmp_path / "out"
    # A long run with an evaluation every round: its first progress line says training has begun.
    proc = subprocess.Popen([OSTRACON, "train", "-c", config, "-o", str(out), "--set", "training.rounds=100000",
                             "--set", "training.eval_every=1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_ignore_sigint if inherited_sigint == "ignored" else None)
    try:
        first = proc.stderr.readline()
        assert "round 1" in first, first
        proc.send_signal(signal.SIGINT)
        stdout, rest = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, rest
    lines = [x for x in rest.strip().splitlines() if x.split(" ", 3)[2:3] != ["INFO"]]
    assert lines == [f"ostracon: interrupted; {out} holds an incomplete run (no state.json): remove it before "
                     "training there again"], rest
    assert "Traceback" not in rest


def test_summary_without_test_split_is_strict_json(tmp_path, capsys):
    out = tmp_path / "out"
    argv = _good_config("--set", "data.test_fraction=0")(tmp_path)
    assert main([*argv, "-o", str(out), "--no-progress"]) == 0
    assert "no test split" in capsys.readouterr().out

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    summary = json.loads((out / "summary.json").read_text(), parse_constant=refuse)
    assert summary["ensemble_test_accuracy"] is None
    assert summary["honest_test_accuracy"] == {"min": None, "mean": None, "max": None}
    assert "data.test_fraction = 0" in summary["note"]
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)
