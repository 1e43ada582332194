"""One import root: the wheel installs only ``ostracon``; docs and deployment files match the code."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import ostracon
from ostracon.cluster.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
DOCKERFILE = (REPO / "deploy" / "Dockerfile").read_text()


def _clean_env() -> dict:
    """This environment without PYTHONPATH, so only the installed distribution is importable."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _can_build_wheels_offline() -> bool:
    """--no-build-isolation uses this environment's setuptools: it builds wheels itself from 70.1 on."""
    import importlib.util

    import setuptools

    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.mark.skipif(not _can_build_wheels_offline(), reason="this environment's setuptools cannot build wheels")
def test_wheel_has_ostracon_as_its_only_top_level_name(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, env=_clean_env())
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("ostracon-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        assert top_level == {"ostracon"}, sorted(top_level)
        for package in ("aggregator", "nodes", "cluster", "v1"):
            assert f"ostracon/{package}/__init__.py" in names
        assert "ostracon/py.typed" in names and "ostracon/cluster/demo.toml" in names
        [info] = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        top_level_file = f"{info}/top_level.txt"
        if top_level_file in names:
            assert archive.read(top_level_file).decode().split() == ["ostracon"]


def test_ostracon_imports_its_own_cluster_beside_a_users_cluster_package(tmp_path):
    user_package = tmp_path / "cluster"
    user_package.mkdir()
    (user_package / "__init__.py").write_text("OWNER = 'user'\n")
    script = "import cluster, ostracon.cluster; print(cluster.OWNER); print(ostracon.cluster.__file__)"
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env=_clean_env())
    assert done.returncode == 0, done.stderr
    owner, ours = done.stdout.split()
    assert owner == "user"
    assert Path(ours).resolve() == (REPO / "cluster" / "__init__.py").resolve()


@pytest.mark.parametrize("name", ["aggregator", "nodes", "cluster", "v1"])
def test_no_generic_top_level_name_is_importable(name, tmp_path):
    done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True,
                          env=_clean_env())
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, done.stderr


def test_every_logger_is_under_ostracon():
    names = []
    for package in ("ostracon.aggregator", "ostracon.nodes", "ostracon.cluster"):
        path = importlib.import_module(package).__path__
        for info in pkgutil.walk_packages(path, prefix=package + "."):  # subpackages too (cluster.execution, ...)
            module = importlib.import_module(info.name)
            logger = getattr(module, "log", None)
            if logger is not None:
                names.append(logger.name)
                assert logger.name == "ostracon" or logger.name.startswith("ostracon."), info.name
    assert "ostracon.cluster.execution.training" in names and "ostracon.cluster.execution.ray_backend" in names
    assert importlib.import_module("ostracon.cluster.cli").log.name == "ostracon"


def test_version_and_typed_marker():
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", ostracon.__version__)
    assert (Path(ostracon.__file__).parent / "py.typed").is_file()


def test_readme_library_example_runs(capsys):
    section = README.split("## Use the rules as a library", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})  # the example asserts the robust rule beats the mean
    assert "rules; cwtm error" in capsys.readouterr().out


def _readme_row(command: str) -> str:
    rows = [line for line in README.splitlines() if line.startswith(f"| `ostracon {command} ")]
    assert len(rows) == 1, command
    return rows[0].split(" | ")[0]


@pytest.mark.parametrize("command", ["train", "unlearn", "verify", "demo", "serve", "delete", "ops", "status",
                                     "certificate"])
def test_readme_command_table_lists_every_option(command):
    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    row = _readme_row(command)
    for action in subparsers[command]._actions:
        longest = max(action.option_strings, key=len, default=None)
        if longest and longest != "--help":
            assert longest in row or min(action.option_strings, key=len) in row, (command, longest)


# ----- deploy/: the image builds from files that exist and pins the Ray the cluster files pin


def _dockerfile_instructions(keyword: str) -> list[list[str]]:
    joined = DOCKERFILE.replace("\\\n", " ")
    return [shlex.split(line)[1:] for line in joined.splitlines() if line.startswith(keyword + " ")]


def test_dockerfile_copies_only_paths_that_exist():
    copies = _dockerfile_instructions("COPY")
    assert copies
    for args in copies:
        sources = [a for a in args if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"deploy/Dockerfile copies {source}, which is not in the repository"
    copied = {s for args in copies for s in args[:-1]}
    for folder in ("aggregator", "nodes", "cluster", "proto"):
        assert folder in copied, folder  # every folder the package-dir mapping installs


def test_dockerfile_smoke_imports_are_importable():
    [smoke] = re.findall(r'python -c "import ([^;"]+);', DOCKERFILE)
    for module in (m.strip() for m in smoke.split(",")):
        importlib.import_module(module)


def test_dockerfile_ray_version_equals_the_pinned_one():
    [docker_ray] = re.findall(r"^ARG RAY_VERSION=(\S+)$", DOCKERFILE, flags=re.M)
    launcher = (REPO / "deploy" / "ray-cluster.yaml").read_text()
    pinned = set(re.findall(r"ray\[default\]==([\w.]+)", launcher))
    for manifest in (REPO / "deploy" / "kuberay").glob("*.yaml"):
        pinned |= set(re.findall(r'rayVersion:\s*"([\w.]+)"', manifest.read_text()))
    assert pinned == {docker_ray}, (docker_ray, pinned)
