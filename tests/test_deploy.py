"""deploy/: the manifests agree with each other and with the code.

There is no container engine, Kubernetes or Ray cluster here, so these are static consistency checks (plus
one loopback gRPC server for the health check the readiness probe makes): every YAML document parses; the
coordinator's Service, readiness probe, token Secret and volumes fit together; every `ostracon ...` command
line in deploy/ parses with the CLI's own parser. The Dockerfile's COPY sources and the Ray version pins
are checked in tests/test_packaging.py.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ostracon.cluster.cli import build_parser
from ostracon.cluster.config import load
from ostracon.cluster.errors import ConfigError
from ostracon.cluster.service.client import check_token_transport
from ostracon.cluster.service.server import CoordinatorServer, check_bind_allowed

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))
KUBE_MANIFESTS = sorted((DEPLOY / "kuberay").glob("*.yaml"))
LAUNCHER = DEPLOY / "ray-cluster.yaml"
RAYCLUSTER = DEPLOY / "kuberay" / "raycluster.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
README = DEPLOY / "README.md"

PARSER = build_parser()
SUBCOMMANDS = frozenset(next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices)
OVERWRITE_CMD = "ray.io/overwrite-container-cmd"
CLIENT_COMMANDS = ("delete", "ops", "status", "certificate")


# ----- a small shell tokenizer: the `ostracon ...` invocations in a shell snippet -------------------------
#
# Enough for the command lines these files hold, not a shell. What it does: joins backslash-newline
# continuations; drops redirections (`> log`, `2>&1`, `< /dev/null`) with a regex that does not know about
# quotes (a quoted `>` inside an argument would be cut too); splits each line into simple commands at
# `;`, `&`, `&&`, `||`, `|`, `(`, `)` (so `nohup ... &`, `$(...)` and `if ...; then ...; fi` come apart);
# skips leading `VAR=value` assignments and the wrappers nohup/exec/env/setsid. Then `ostracon` followed by
# a subcommand starts an invocation, wherever it stands (`kubectl exec POD -- ostracon ...`); in
# `docker run ...` the first `[REGISTRY/]ostracon:TAG` is the image, and what follows it (else the image's
# CMD) is the argv. The script argument of `bash -c`/`sh -c`/`ray exec` is scanned the same way. Limits:
# a quoted string spanning lines, `#` inside a word (shlex starts a comment there), here-documents, and
# variables: `$X` stays a literal argument, which argparse accepts wherever it takes a string.

_REDIRECTION = re.compile(r"(?<![^\s;&|(])\d*(?:>>|>&|&>|>|<)\s*[^\s;&|()<>]+")
_CONTROL = frozenset({";", "&", "&&", "||", "|", "|&", "(", ")", ";;"})
_WRAPPERS = frozenset({"nohup", "exec", "env", "setsid"})
_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
_IMAGE = re.compile(r"^(?:\S+/)?ostracon:[\w.-]+$")
_MENTION = re.compile(r"(?<![\w.-])ostracon(?::[\w.-]+)?\s")  # a cheap filter before shlex


def _simple_commands(line: str) -> list[list[str]]:
    lexer = shlex.shlex(_REDIRECTION.sub(" ", line), posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in _CONTROL:
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in commands + [current] if c]


def ostracon_argvs(text: str, image_cmd: list[str] | None = None) -> list[list[str]]:
    """Every ostracon invocation in shell ``text``, as the argv after ``ostracon``."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        for command in _simple_commands(line):
            while command and (command[0] in _WRAPPERS or _ASSIGNMENT.match(command[0])):
                command = command[1:]
            if not command:
                continue
            if command[0] in ("docker", "podman") and command[1:2] == ["run"]:
                image = next((i for i, t in enumerate(command) if _IMAGE.match(t)), None)
                if image is not None:
                    found.append(command[image + 1:] or list(image_cmd or []))
                continue
            start = next((i for i, t in enumerate(command[:-1])
                          if t == "ostracon" and command[i + 1] in SUBCOMMANDS), None)
            if start is not None:
                found.append(command[start + 1:])
            elif command[0] in ("bash", "sh") or command[:2] == ["ray", "exec"]:
                for script in (t for t in command[1:] if _MENTION.search(t)):
                    found.extend(ostracon_argvs(script, image_cmd))
    return found


def test_tokenizer_on_the_shapes_the_files_use():
    assert ostracon_argvs("nohup ostracon serve --state-dir /s --port 1 > ~/log 2>&1 < /dev/null & echo $! > pid") \
        == [["serve", "--state-dir", "/s", "--port", "1"]]
    assert ostracon_argvs('HEAD=$(kubectl get pod -o name)\nkubectl exec -it "$HEAD" -- ostracon train -c a \\\n'
                          "  -o b --address auto") == [["train", "-c", "a", "-o", "b", "--address", "auto"]]
    assert ostracon_argvs("ray exec cfg.yaml 'ostracon status --target h:1' ; ray stop") \
        == [["status", "--target", "h:1"]]
    assert ostracon_argvs('ps -p "$pid" -o args= | grep -q ostracon; pip install -e ~/ostracon') == []
    assert ostracon_argvs("docker run --rm --name ostracon -v ostracon-state:/s R/ostracon:0.1 demo") == [["demo"]]
    assert ostracon_argvs("docker run -d ostracon:0.1", image_cmd=["serve"]) == [["serve"]]


# ----- the files --------------------------------------------------------------------------------------------


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _objects(kind: str, path: Path = RAYCLUSTER) -> list[dict]:
    return [d for d in _documents(path) if d.get("kind") == kind]


def _comments(text: str) -> str:
    """The whole-line comments of a YAML file or Dockerfile, `#` removed, other lines blank."""
    return "\n".join(m.group(1) if (m := re.match(r"\s*#(.*)$", line)) else "" for line in text.splitlines())


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _containers(node):
    """Every container (a dict under a `containers` list) in a document."""
    if isinstance(node, dict):
        yield from node.get("containers") or ()
        for value in node.values():
            yield from _containers(value)
    elif isinstance(node, list):
        for value in node:
            yield from _containers(value)


def _dockerfile_lines() -> list[str]:
    return DOCKERFILE.read_text().replace("\\\n", " ").splitlines()


def _dockerfile_exec_form(keyword: str) -> list[str]:
    [line] = [x for x in _dockerfile_lines() if x.startswith(keyword + " ")]
    return json.loads(line[len(keyword) + 1:])


def _image_cmd() -> list[str]:
    return _dockerfile_exec_form("ENTRYPOINT")[1:] + _dockerfile_exec_form("CMD")


def _readme_code() -> str:
    return "\n".join(re.findall(r"```(?:bash|sh|console)?\n(.*?)```", README.read_text(), flags=re.S))


def _invocations() -> list[tuple[str, list[str]]]:
    """(where, argv) for every ostracon command line in deploy/: manifests (values and comments), the
    Dockerfile (ENTRYPOINT + CMD, RUN lines, comments) and the README's code blocks."""
    image_cmd = _image_cmd()
    found = []

    def add(where, text, lenient=False):
        for line in text.replace("\\\n", " ").splitlines():
            if not _MENTION.search(line):
                continue
            try:
                found.extend((where, argv) for argv in ostracon_argvs(line, image_cmd))
            except ValueError:  # prose in a comment (an apostrophe) is not a command
                if not lenient:
                    raise

    for path in MANIFESTS:
        where = str(path.relative_to(REPO))
        for document in _documents(path):
            for value in _strings(document):
                add(where, value)
            for container in _containers(document):  # exec form: command/args lists that start with ostracon
                argv = list(container.get("command") or []) + list(container.get("args") or [])
                if argv and Path(argv[0]).name == "ostracon":
                    found.append((where, argv[1:]))
        add(where + " (comments)", _comments(path.read_text()), lenient=True)
    assert _dockerfile_exec_form("ENTRYPOINT")[0] == "ostracon"
    found.append(("deploy/Dockerfile ENTRYPOINT+CMD", image_cmd))
    add("deploy/Dockerfile", "\n".join(x[4:] for x in _dockerfile_lines() if x.startswith("RUN ")))
    add("deploy/Dockerfile (comments)", _comments(DOCKERFILE.read_text()), lenient=True)
    add("deploy/README.md", _readme_code())
    return found


INVOCATIONS = _invocations()


def _parse(argv: list[str]) -> argparse.Namespace:
    return PARSER.parse_args(argv)


def _serves(where_prefix: str) -> list[argparse.Namespace]:
    return [_parse(argv) for where, argv in INVOCATIONS if where == where_prefix and argv[:1] == ["serve"]]


@pytest.mark.parametrize("where,argv", INVOCATIONS, ids=[f"{w}: {' '.join(a)[:60]}" for w, a in INVOCATIONS])
def test_every_ostracon_command_line_parses(where, argv):
    try:
        args = _parse(argv)
    except SystemExit as exc:  # --help / --version exit 0; a parse error exits 2
        assert exc.code == 0, f"{where}: `ostracon {' '.join(argv)}` does not parse"
        return
    token = "from --token-file" if getattr(args, "token_file", None) else None
    try:  # the CLI's own rules: what they refuse would not start where these files run it
        if args.command == "serve":  # off loopback: a token, and TLS or an explicit --insecure
            check_bind_allowed(args.host, token, tls=bool(args.tls_cert and args.tls_key), insecure=args.insecure)
        if args.command in CLIENT_COMMANDS:  # a token in plaintext only to loopback or with --insecure
            check_token_transport(args.target, token, tls=bool(args.tls_ca), insecure=args.insecure)
    except ConfigError as exc:
        pytest.fail(f"{where}: `ostracon {' '.join(argv)}` is refused: {exc}")
    if args.command in ("train", "serve") and args.config:
        _assert_config_is_shipped(where, args.config)


def test_the_coordinator_is_served_everywhere_and_clients_are_shown():
    for where in ("deploy/ray-cluster.yaml", "deploy/kuberay/raycluster.yaml", "deploy/Dockerfile ENTRYPOINT+CMD"):
        assert _serves(where), f"{where} starts no `ostracon serve`"
    clients = [_parse(argv) for _, argv in INVOCATIONS if argv[:1] in (["status"], ["delete"])]
    assert clients and all(c.token_file for c in clients), "client examples must send the token (--token-file)"


def _configmap_files() -> dict[str, str]:
    return {f"/configs/{key}": text for path in KUBE_MANIFESTS for cm in _objects("ConfigMap", path)
            for key, text in cm["data"].items()}


def _assert_config_is_shipped(where: str, config: str) -> None:
    """A config path a command names exists where it runs: the repository synced to ~/ostracon (launcher),
    copied to /opt/ostracon (image), or a ConfigMap key under /configs. Placeholders (CONFIG.toml) pass."""
    for prefix in ("~/ostracon/", "/opt/ostracon/"):
        if config.startswith(prefix):
            assert (REPO / config[len(prefix):]).is_file(), f"{where}: -c {config} is not in the repository"
    if config.startswith("/configs/"):
        assert config in _configmap_files(), f"{where}: -c {config} is no key of a ConfigMap"


def test_every_yaml_document_parses():
    assert MANIFESTS
    for path in MANIFESTS:
        documents = _documents(path)
        assert documents, path
        for document in documents:
            assert isinstance(document, dict), path
            if path in KUBE_MANIFESTS:
                assert {"apiVersion", "kind", "metadata"} <= document.keys(), path


def test_configmap_configs_pass_config_validation(tmp_path):
    for name, text in _configmap_files().items():
        path = tmp_path / Path(name).name
        path.write_text(text)
        load(path)


def test_objects_in_several_manifests_are_identical():
    seen: dict[tuple[str, str], tuple[Path, dict]] = {}
    for path in KUBE_MANIFESTS:
        for document in _documents(path):
            key = (document["kind"], document["metadata"]["name"])
            if key in seen:
                assert document == seen[key][1], f"{key} differs between {seen[key][0].name} and {path.name}"
            seen[key] = (path, document)


# ----- the KubeRay head: Service, probe, token, volumes -------------------------------------------------------


def _raycluster() -> dict:
    [cluster] = _objects("RayCluster")
    return cluster


def _pod_specs():
    """(path, where, pod spec) for every group of every RayCluster and RayJob."""
    for path in KUBE_MANIFESTS:
        for document in _documents(path):
            if document["kind"] == "RayCluster":
                spec = document["spec"]
            elif document["kind"] == "RayJob" and "rayClusterSpec" in document["spec"]:
                spec = document["spec"]["rayClusterSpec"]
            else:
                continue
            yield path, f"{path.name} head", spec["headGroupSpec"]["template"]["spec"]
            for group in spec.get("workerGroupSpecs", []):
                yield path, f"{path.name} {group['groupName']}", group["template"]["spec"]


def _head_container() -> dict:
    return _raycluster()["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]  # KubeRay's Ray container


def _head_ports() -> dict:
    return {p["containerPort"]: p.get("name") for p in _head_container()["ports"]}


def _head_serve() -> argparse.Namespace:
    [serve] = _serves("deploy/kuberay/raycluster.yaml")
    return serve


def test_service_selects_the_head_and_targets_the_coordinators_port():
    [service] = _objects("Service")
    cluster = _raycluster()
    head_labels = {**cluster["spec"]["headGroupSpec"]["template"]["metadata"].get("labels", {}),
                   "ray.io/cluster": cluster["metadata"]["name"], "ray.io/node-type": "head"}  # KubeRay's labels
    assert service["spec"]["selector"].items() <= head_labels.items()
    ports = _head_ports()
    by_name = {name: number for number, name in ports.items()}
    [port] = service["spec"]["ports"]
    target = port.get("targetPort", port["port"])
    target = by_name.get(target) if isinstance(target, str) else target
    assert target in ports, f"Service targetPort {port.get('targetPort')} is no containerPort of the head"
    assert target == port["port"] == _head_serve().port


def test_readiness_probe_asks_the_health_service_for_the_name_the_server_registers():
    probe = _head_container()["readinessProbe"]["grpc"]
    assert probe["port"] in _head_ports() and probe["port"] == _head_serve().port
    # What the kubelet does: Health/Check(service) without credentials, against a server that has a token.
    server = CoordinatorServer(object(), host="127.0.0.1", port=0, token="t0ken")
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            request = health_pb2.HealthCheckRequest(service=probe["service"])
            assert check(request, timeout=10).status == health_pb2.HealthCheckResponse.NOT_SERVING
            server.mark_serving()
            assert check(request, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0)


def test_every_volume_mount_names_a_volume_of_its_pod():
    for _, where, pod in _pod_specs():
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}: mount {mount['name']} has no volume"


def _defined(kind: str) -> set[str]:
    return {d["metadata"]["name"] for path in KUBE_MANIFESTS for d in _objects(kind, path)}


def _created_by_command(kind: str, path: Path) -> dict[str, set[str]]:
    """{name: keys} of the `kubectl create secret generic NAME --from-file=KEY=...` (or configmap)
    commands shown in the file's comments."""
    created = {}
    pattern = rf"kubectl create {kind}(?: generic)? ([\w.-]+)((?: --from-(?:file|literal)=\S+)*)"
    for name, sources in re.findall(pattern, _comments(path.read_text())):
        created[name] = set(re.findall(r"--from-(?:file|literal)=([\w.-]+)=", sources))
    return created


def test_every_secret_configmap_and_claim_is_defined_or_created_by_a_shown_command():
    for path, where, pod in _pod_specs():
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                name = volume["persistentVolumeClaim"]["claimName"]
                assert name in _defined("PersistentVolumeClaim"), f"{where}: PVC {name}"
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                assert name in _defined("ConfigMap") | set(_created_by_command("configmap", path)), name
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                created = _created_by_command("secret", path)
                assert name in _defined("Secret") or name in created, f"{where}: Secret {name}"
                for item in volume["secret"].get("items", []):  # the key the shown command creates
                    assert name not in created or item["key"] in created[name], (name, item["key"])


def test_token_file_is_the_mounted_secret():
    head = _raycluster()["spec"]["headGroupSpec"]["template"]["spec"]
    secret_volumes = {v["name"]: v["secret"] for v in head["volumes"] if "secret" in v}
    files = set()
    for mount in _head_container()["volumeMounts"]:
        if mount["name"] in secret_volumes:
            items = secret_volumes[mount["name"]].get("items", [])
            files |= {f"{mount['mountPath']}/{item['path']}" for item in items}
    token_file = _head_serve().token_file
    assert token_file in files, f"--token-file {token_file} is not a file of a mounted Secret ({sorted(files)})"
    [docker_serve] = _serves("deploy/Dockerfile ENTRYPOINT+CMD")
    assert docker_serve.token_file == token_file  # the image's default expects the same mount


def test_overwritten_container_commands_still_start_ray():
    """With ray.io/overwrite-container-cmd, KubeRay runs each container's own command: every Ray container
    must run the generated `ray start` itself (else the image's `ostracon serve` would run instead), and
    the head must start Ray before the coordinator that joins it."""
    cluster = _raycluster()
    assert cluster["metadata"].get("annotations", {}).get(OVERWRITE_CMD) == "true"
    for path, where, pod in _pod_specs():
        if path != RAYCLUSTER:
            continue
        container = pod["containers"][0]
        script = " ".join(container.get("command", []) + container.get("args", []))
        assert "KUBERAY_GEN_RAY_START_CMD" in script and "ulimit -n" in script, where
        if where.endswith("head"):
            assert script.index("KUBERAY_GEN_RAY_START_CMD") < script.index("ostracon serve"), where
            assert "preStop" not in container.get("lifecycle", {}), "a preStop `ray stop` would cut the drain"
    assert _head_serve().address == "auto"


def test_tls_where_the_port_is_published_and_insecure_only_behind_the_plaintext_probe():
    """The launcher and the image serve TLS; the KubeRay head serves --insecure only because the kubelet's
    gRPC readiness probe speaks plaintext (TLS terminates in front: port-forward, an Ingress); the image's
    plaintext variant is shown with an explicit --insecure."""
    config = yaml.safe_load(LAUNCHER.read_text())
    [launcher] = _serves("deploy/ray-cluster.yaml")
    assert not launcher.insecure and {launcher.tls_cert, launcher.tls_key} <= set(config["file_mounts"])
    launcher_clients = [_parse(a) for w, a in INVOCATIONS if w.startswith("deploy/ray-cluster.yaml")
                        and a[:1] in (["status"], ["delete"])]
    assert launcher_clients and all(c.tls_ca == launcher.tls_cert for c in launcher_clients)
    [image] = _serves("deploy/Dockerfile ENTRYPOINT+CMD")
    assert not image.insecure and image.tls_cert and image.tls_key
    tls_dir = str(Path(image.tls_cert).parent)
    assert Path(image.tls_key).parent == Path(tls_dir)
    assert re.search(rf'-v "[^"]+:{re.escape(tls_dir)}:ro"', _readme_code()), "the README's docker run mounts no certs"
    head = _head_serve()
    assert head.insecure and not head.tls_cert and "grpc" in _head_container()["readinessProbe"]
    for where in ("deploy/README.md", "deploy/Dockerfile (comments)"):
        variants = _serves(where)
        assert any(s.insecure and not s.tls_cert for s in variants), f"{where} shows no --insecure variant"


# ----- the Ray cluster launcher ---------------------------------------------------------------------------


def test_launcher_head_serves_after_ray_start_with_a_shipped_token():
    config = yaml.safe_load(LAUNCHER.read_text())
    commands = config["head_start_ray_commands"]
    [ray_start] = [i for i, c in enumerate(commands) if "ray start --head" in c]
    [serve_at] = [i for i, c in enumerate(commands) if any(a[:1] == ["serve"] for a in ostracon_argvs(c))]
    assert ray_start < serve_at
    [serve] = _serves("deploy/ray-cluster.yaml")
    assert serve.address == "auto" and serve.token_file in config["file_mounts"]


# ----- the Dockerfile ---------------------------------------------------------------------------------------


def test_dockerfile_runs_as_a_non_root_user_after_installing():
    lines = _dockerfile_lines()
    last_install = max(i for i, x in enumerate(lines) if x.startswith("RUN ") and "pip install" in x)
    users = [(i, x.split()[1]) for i, x in enumerate(lines) if x.startswith("USER ")]
    assert users and users[-1][0] > last_install
    assert users[-1][1].split(":")[0] not in ("root", "0")


def test_dockerfile_exposes_the_port_its_default_command_serves():
    [serve] = _serves("deploy/Dockerfile ENTRYPOINT+CMD")
    exposed = {int(p.split("/")[0]) for x in _dockerfile_lines() if x.startswith("EXPOSE ") for p in x.split()[1:]}
    assert exposed == {serve.port} == {_head_serve().port}
