"""Coordinator pieces that need no cluster: token sources, the bind rule, status mapping, CLI errors."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import grpc
import pytest

from ostracon.cluster import errors
from ostracon.cluster.cli import build_parser, main
from ostracon.cluster.errors import ConfigError, RequestError
from ostracon.cluster.service.auth import load_token
from ostracon.cluster.service.client import target_hosts
from ostracon.cluster.service.server import check_bind_allowed, format_address, is_loopback, tls_credentials
from ostracon.cluster.service.statuses import ERROR_CODES, status_for


def test_token_file_wins_over_the_environment_and_whitespace_is_stripped(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("  from-file\n\n")
    assert load_token(str(token_file), {"OSTRACON_TOKEN": "from-env"}) == "from-file"
    assert load_token(None, {"OSTRACON_TOKEN": "\tfrom-env \n"}) == "from-env"
    assert load_token(None, {}) is None


@pytest.mark.parametrize("content, words", [("   \n", "empty"), ("two words", "visible ASCII"),
                                            ("caf\u00e9", "visible ASCII")])
def test_unusable_tokens_are_named_errors(tmp_path, content, words):
    token_file = tmp_path / "token"
    token_file.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=words):
        load_token(str(token_file), {})
    with pytest.raises(ConfigError, match=r"\$OSTRACON_TOKEN"):
        load_token(None, {"OSTRACON_TOKEN": content})


def test_a_missing_token_file_is_named(tmp_path):
    with pytest.raises(RequestError, match="--token-file .*nope: no such file"):
        load_token(str(tmp_path / "nope"), {"OSTRACON_TOKEN": "x"})


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("[::1]", True), ("127.0.0.2", True), ("0.0.0.0", False),
                                            ("::", False), ("10.1.2.3", False), ("example.org", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback
    if loopback:
        check_bind_allowed(host, None)
    else:
        with pytest.raises(ConfigError, match=f"--host {host} is not a loopback address: .* without a token"):
            check_bind_allowed(host, None, insecure=True)  # --insecure never excuses a missing token
        with pytest.raises(ConfigError, match=f"--host {host} is not a loopback address: .*plaintext.*"
                                              "--tls-cert and --tls-key, or --insecure"):
            check_bind_allowed(host, "a-token")  # a token, but plaintext
        check_bind_allowed(host, "a-token", tls=True)  # with a token, TLS or an explicit --insecure
        check_bind_allowed(host, "a-token", insecure=True)


def test_ipv6_addresses_are_bracketed():
    assert format_address("::1", 5) == "[::1]:5" and format_address("127.0.0.1", 5) == "127.0.0.1:5"


def test_tls_needs_both_files_and_names_a_missing_one(tmp_path):
    with pytest.raises(ConfigError, match="give both or neither"):
        tls_credentials(str(tmp_path / "cert.pem"), None)
    with pytest.raises(RequestError, match="--tls-key .*key.pem: no such file"):
        tls_credentials(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    assert tls_credentials(None, None) is None


def test_every_error_type_maps_to_its_code_subclasses_first():
    expected = {"UnknownIdsError": grpc.StatusCode.NOT_FOUND, "HeldOutIdsError": grpc.StatusCode.FAILED_PRECONDITION,
                "RequestError": grpc.StatusCode.INVALID_ARGUMENT,
                "IdempotencyConflictError": grpc.StatusCode.ALREADY_EXISTS,
                "OperationNotFoundError": grpc.StatusCode.NOT_FOUND,
                "PreconditionError": grpc.StatusCode.FAILED_PRECONDITION,
                "StateDirError": grpc.StatusCode.FAILED_PRECONDITION, "ClusterError": grpc.StatusCode.UNAVAILABLE}
    for name, code in expected.items():
        cls = getattr(errors, name)
        assert status_for(cls(f"a {name}")) == (code, f"a {name}"), name
    classes = [cls for cls, _ in ERROR_CODES]
    for k, cls in enumerate(classes):  # a subclass listed after its base would never be reached
        for base in classes[:k]:
            assert not issubclass(cls, base), (cls, base)


def test_a_bug_is_internal_without_its_message():
    code, details = status_for(ZeroDivisionError("secret internals"))
    assert code == grpc.StatusCode.INTERNAL and "secret" not in details and "ZeroDivisionError" in details


def test_client_commands_share_the_connection_options():
    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command in ("delete", "ops", "status", "certificate"):
        options = {o for a in subparsers[command]._actions for o in a.option_strings}
        assert {"--target", "--token-file", "--timeout", "--tls-ca", "--insecure"} <= options, command
    args = build_parser().parse_args(["delete", "--target", "h:1", "--ids-json", '["a,b"]', "--mode", "approximate",
                                      "--wait", "--idempotency-key", "k"])
    assert (args.mode, args.wait, args.idempotency_key, args.ids_json) == ("approximate", True, "k", '["a,b"]')
    args = build_parser().parse_args(["serve", "--state-dir", "d", "--port", "0"])
    assert (args.host, args.port, args.max_ids_per_request) == ("127.0.0.1", 0, 10_000)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_target_is_one_line_naming_it(capsys):
    target = f"127.0.0.1:{_closed_port()}"
    assert main(["status", "--target", target, "--timeout", "20"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ostracon: error: UNAVAILABLE: coordinator at {target}:") and "\n" not in err


def test_serve_refuses_a_public_address_without_a_token_before_touching_the_state_dir(tmp_path):
    state = tmp_path / "state"
    done = subprocess.run([sys.executable, "-m", "ostracon.cluster.cli", "serve", "--state-dir", str(state),
                           "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True,
                          env={k: v for k, v in __import__("os").environ.items() if k != "OSTRACON_TOKEN"})
    assert done.returncode == 2, done.stderr
    assert "--host 0.0.0.0 is not a loopback address" in done.stderr
    assert not state.exists()


def test_serve_refuses_plaintext_on_a_public_address_without_insecure_before_touching_the_state_dir(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s" * 40)
    token_file.chmod(0o600)
    state = tmp_path / "state"
    done = subprocess.run([sys.executable, "-m", "ostracon.cluster.cli", "serve", "--state-dir", str(state),
                           "--host", "0.0.0.0", "--port", "0", "--token-file", str(token_file)],
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("ostracon: error: --host 0.0.0.0 is not a loopback address: refusing to serve plaintext")
    assert "--tls-cert and --tls-key, or --insecure" in line
    assert not state.exists()
    args = build_parser().parse_args(["serve", "--state-dir", "d", "--host", "0.0.0.0", "--insecure"])
    assert args.insecure and not build_parser().parse_args(["serve", "--state-dir", "d"]).insecure


# ----- the client: no bearer token in plaintext beyond this machine -----------------------------------------


@pytest.mark.parametrize("target, hosts", [
    ("127.0.0.1:50051", ["127.0.0.1"]), ("localhost:1", ["localhost"]), ("[::1]:1", ["::1"]), ("::1", ["::1"]),
    ("dns:///10.0.0.1:1", ["10.0.0.1"]), ("dns://8.8.8.8/localhost:1", ["localhost"]),
    ("ipv4:127.0.0.1:1,10.0.0.2:1", ["127.0.0.1", "10.0.0.2"]), ("ipv6:[::1]:1", ["::1"]),
    ("unix:/run/ostracon.sock", []), ("example.org", ["example.org"])])
def test_target_hosts(target, hosts):
    assert target_hosts(target) == hosts


class ChannelSpy:
    """Records the targets of the channels the client creates (the real gRPC functions do the work): a
    refused client must create none, so nothing can connect."""

    def __init__(self, monkeypatch):
        self.targets: list[str] = []
        for name in ("insecure_channel", "secure_channel"):
            real = getattr(grpc, name)
            monkeypatch.setattr(grpc, name, self._recording(real))

    def _recording(self, real):
        def channel(target, *args, **kwargs):
            self.targets.append(target)
            return real(target, *args, **kwargs)
        return channel


REMOTE_TARGETS = ["10.255.255.1:50051", "dns:///10.255.255.1:50051", "ipv4:127.0.0.1:1,10.255.255.1:1",
                  "[2001:db8::1]:50051", "coordinator.example.invalid:50051"]


@pytest.mark.parametrize("target", REMOTE_TARGETS)
def test_the_client_refuses_a_token_in_plaintext_to_a_remote_target_before_any_channel(target, monkeypatch):
    from ostracon.cluster.service.client import CoordinatorClient

    spy = ChannelSpy(monkeypatch)
    with pytest.raises(ConfigError) as caught:
        CoordinatorClient(target, token="a-token", timeout=30)
    message = str(caught.value)
    assert message.startswith(f"--target {target} is not a loopback address: refusing to send the bearer token")
    assert "--tls-ca" in message and "--insecure" in message and "\n" not in message
    assert spy.targets == []
    with CoordinatorClient(target, token="a-token", timeout=30, insecure=True):  # the explicit opt-out
        pass
    with CoordinatorClient(target, timeout=30):  # no token: nothing secret to send
        pass
    assert spy.targets == [target, target]  # the spy sees channels: its empty list above means none was made


def test_the_cli_client_refuses_at_once_and_insecure_opts_out(tmp_path, monkeypatch, capsys):
    from ostracon.cluster.cli import _client

    token_file = tmp_path / "token"
    token_file.write_text("a-token")
    spy = ChannelSpy(monkeypatch)
    for command in (["status"], ["ops"], ["certificate", "op-000001"], ["delete", "--ids", "1", "--wait"]):
        began = time.monotonic()
        assert main([*command, "--target", "10.255.255.1:50051", "--token-file", str(token_file),
                     "--timeout", "30"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ostracon: error: --target 10.255.255.1:50051 is not a loopback address") and \
            "\n" not in err, err
        assert time.monotonic() - began < 5, "refused before any connection attempt (the deadline is 30 s)"
    assert spy.targets == []
    args = build_parser().parse_args(["status", "--target", "10.255.255.1:50051", "--token-file", str(token_file),
                                      "--insecure"])
    _client(args).close()  # accepted: a channel is made (and closed before any call)
    assert spy.targets == ["10.255.255.1:50051"]


def test_the_client_sends_its_token_in_plaintext_to_a_loopback_server(tmp_path):
    from ostracon.cluster.coordinator.deployment import Deployment
    from ostracon.cluster.service.client import CoordinatorClient, CoordinatorError
    from ostracon.cluster.service.server import CoordinatorServer

    not_started = Deployment(str(tmp_path / "state"))  # never started: an accepted token gets UNAVAILABLE
    server = CoordinatorServer(not_started, host="127.0.0.1", port=0, token="tok")
    server.start()
    port = server.address.rsplit(":", 1)[1]
    try:
        for target in (server.address, f"localhost:{port}", f"ipv4:127.0.0.1:{port}", f"dns:///127.0.0.1:{port}"):
            with CoordinatorClient(target, token="tok", timeout=30) as client:
                with pytest.raises(CoordinatorError) as caught:
                    client.status()
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, (target, caught.value)
                assert "not ready" in caught.value.details()  # past the token check: it was sent
            with CoordinatorClient(target, token="wrong", timeout=30) as client:
                with pytest.raises(CoordinatorError) as caught:
                    client.status()
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, target
    finally:
        server.stop(0)
    assert not (tmp_path / "state").exists()


def test_tls_server_and_client_with_a_self_signed_certificate(tmp_path):
    import shutil

    from ostracon.cluster.coordinator.deployment import Deployment
    from ostracon.cluster.service.client import CoordinatorClient, CoordinatorError
    from ostracon.cluster.service.server import CoordinatorServer

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    not_started = Deployment(str(tmp_path / "state"))  # never started: the servicer answers UNAVAILABLE
    server = CoordinatorServer(not_started, host="127.0.0.1", port=0, token="tok",
                               credentials=tls_credentials(str(cert), str(key)))
    server.start()
    try:
        with CoordinatorClient(server.address, token="tok", timeout=30, tls_ca=str(cert)) as client:
            assert client.health() == "NOT_SERVING"  # over TLS, before the cluster is warm
            with pytest.raises(CoordinatorError) as caught:
                client.status()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "not ready" in caught.value.details()
            server.mark_serving()
            assert client.health() == "SERVING"
        with CoordinatorClient(server.address, token="tok", timeout=30) as plaintext:
            with pytest.raises(CoordinatorError) as caught:  # a plaintext client cannot talk to a TLS server
                plaintext.health()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()
    assert not (tmp_path / "state").exists()
