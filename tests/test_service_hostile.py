"""The coordinator against hostile clients: a real server on a free loopback port, real gRPC clients.

Each test opens a bounded number of calls a hostile (mostly unauthenticated) client would hold open, and
checks that authenticated calls and the health check still answer within a second, that the excess is
refused with RESOURCE_EXHAUSTED naming its limit, and that the server keeps nothing per caller.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ostracon.cluster.coordinator.deployment import HOLD_ENV, Deployment
from ostracon.cluster.service.guard import RateLimitedLog
from ostracon.cluster.service.server import CoordinatorServer, ServerLimits
from ostracon.v1 import coordinator_pb2 as pb
from ostracon.v1 import coordinator_pb2_grpc as pb_grpc

from helpers import trainer_ids

TOKEN = "hostile-suite-token-0123456789abcdef"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
C = grpc.StatusCode
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
STATUS = "/ostracon.v1.Coordinator/GetClusterStatus"
PROMPT_S = 1.0  # what "still answers" means


@pytest.fixture(scope="module")
def served(tmp_path_factory, trained):
    state = tmp_path_factory.mktemp("hostile") / "state"
    shutil.copytree(trained, state)
    deployment = Deployment(str(state))
    deployment.start()
    server = CoordinatorServer(deployment, host="127.0.0.1", port=0, token=TOKEN)
    server.start()
    server.mark_serving()
    yield server, deployment
    server.stop(0)
    deployment.close(drain=True)


class Stalled:
    """Request iterators that never yield until released: calls whose body never arrives."""

    def __init__(self):
        self.release = threading.Event()

    def body(self):
        self.release.wait()
        return
        yield  # a generator that yields nothing


def _prompt(server) -> None:
    """An authenticated GetClusterStatus and the health check, each on a fresh channel, within PROMPT_S."""
    with grpc.insecure_channel(server.address) as channel:
        began = time.monotonic()
        status = pb_grpc.CoordinatorStub(channel).GetClusterStatus(pb.GetClusterStatusRequest(), metadata=AUTH,
                                                                   timeout=5)
        took = time.monotonic() - began
        assert status.workers and took < PROMPT_S, took
        began = time.monotonic()
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="ostracon.v1.Coordinator"), timeout=5)
        took = time.monotonic() - began
        assert health.status == health_pb2.HealthCheckResponse.SERVING and took < PROMPT_S, took


def _eventually(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_idle_reflection_streams_and_stalled_unauthenticated_calls_hold_nothing(served):
    server, _ = served
    stalled = Stalled()
    channels = [grpc.insecure_channel(server.address) for _ in range(8)]
    calls, refused = [], []
    try:
        for k in range(64):
            channel = channels[k % len(channels)]
            calls.append(channel.stream_stream(REFLECTION)(stalled.body(), timeout=60))  # idle stream, no token
            if k % 2:  # a health check whose body never comes (an open service: it waits, on no thread)
                calls.append(channel.stream_unary(HEALTH_CHECK).future(stalled.body(), timeout=60))
            else:  # a Coordinator call without a token: refused from its headers, body never awaited
                refused.append(channel.stream_unary(STATUS).future(stalled.body(), timeout=60))
        _eventually(lambda: server.guard.open_calls >= 64 + 32)
        _prompt(server)
        for call in refused:
            assert call.exception(timeout=5).code() == C.UNAUTHENTICATED
    finally:
        for call in calls:
            call.cancel()
        stalled.release.set()
        for channel in channels:
            channel.close()
    _eventually(lambda: server.guard.open_calls == 0)  # every held call was let go and uncounted
    _prompt(server)


def test_open_services_and_all_calls_are_capped_with_resource_exhausted(tmp_path):
    not_started = Deployment(str(tmp_path / "state"))  # never started: Coordinator calls answer UNAVAILABLE
    limits = ServerLimits(max_concurrent_rpcs=12, max_open_calls=4)
    server = CoordinatorServer(not_started, host="127.0.0.1", port=0, token=TOKEN, limits=limits)
    server.start()
    stalled = Stalled()
    channel = grpc.insecure_channel(server.address)
    calls = []
    try:
        calls += [channel.stream_unary(HEALTH_CHECK).future(stalled.body(), timeout=30) for _ in range(4)]
        _eventually(lambda: server.guard.open_calls == 4)
        with pytest.raises(grpc.RpcError) as caught:  # a fifth open-service call
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert caught.value.code() == C.RESOURCE_EXHAUSTED and "limit 4" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:  # authenticated calls still answer (not ready yet)
            pb_grpc.CoordinatorStub(channel).GetClusterStatus(pb.GetClusterStatusRequest(), metadata=AUTH, timeout=5)
        assert caught.value.code() == C.UNAVAILABLE
        # authenticated calls whose body never comes fill the server's own limit: the excess is refused
        calls += [channel.stream_unary(STATUS).future(stalled.body(), timeout=30, metadata=AUTH) for _ in range(8)]
        time.sleep(0.5)
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.CoordinatorStub(channel).GetClusterStatus(pb.GetClusterStatusRequest(), metadata=AUTH, timeout=5)
        assert caught.value.code() == C.RESOURCE_EXHAUSTED
    finally:
        for call in calls:
            call.cancel()
        stalled.release.set()
        channel.close()
        server.stop(0)
    assert not (tmp_path / "state").exists()


def test_watchers_beyond_the_per_token_limit_are_refused_and_the_rest_block_nothing(served, config, tmp_path,
                                                                                    monkeypatch):
    server, deployment = served
    limit = server.limits.max_watches_per_caller
    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setenv(HOLD_ENV, str(hold))  # the replay waits at its first round while the file exists
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.CoordinatorStub(channel)
    op = stub.Delete(pb.DeleteRequest(sample_ids=trainer_ids(config, 1, seed=5)), metadata=AUTH, timeout=30)
    calls = []
    try:
        calls = [stub.WatchOperation(pb.WatchOperationRequest(operation_id=op.id), metadata=AUTH, timeout=60)
                 for _ in range(64)]
        _eventually(lambda: sum(c.done() for c in calls) >= 64 - limit)
        refused = [c for c in calls if c.done()]
        assert len(refused) == 64 - limit
        for call in refused:
            assert call.code() == C.RESOURCE_EXHAUSTED and f"limit {limit}" in call.details()
        _prompt(server)  # the open watchers hold no thread
        assert sum(c.done() for c in calls) == 64 - limit
    finally:
        hold.unlink()
    try:
        live = next(c for c in calls if not c.done())
        final = [event.operation.state for event in live][-1]
        assert final == pb.OPERATION_STATE_SUCCEEDED
    finally:
        for call in calls:
            call.cancel()
        channel.close()
    _eventually(lambda: not server.servicer._watches)  # every stream's count is gone with it
    _prompt(server)


def test_health_answers_only_its_names_and_keeps_nothing_per_name(served):
    server, _ = served
    names_before = dict(server.health._status)
    limit = server.guard.max_open_request_bytes
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for k in range(16):  # distinct names, no token
            name = f"{k}-" + "n" * (limit // 2)
            for call in (health.Check, lambda r, **kw: list(health.Watch(r, **kw))):
                with pytest.raises(grpc.RpcError) as caught:
                    call(health_pb2.HealthCheckRequest(service=name), timeout=10)
                assert caught.value.code() == C.NOT_FOUND and len(caught.value.details()) < 1000
        for size in (limit + 1, server.limits.max_receive_bytes + 1):  # the open services' limit, gRPC's
            with pytest.raises(grpc.RpcError) as caught:
                health.Check(health_pb2.HealthCheckRequest(service="x" * size), timeout=10)
            assert caught.value.code() == C.RESOURCE_EXHAUSTED
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
    assert server.health._status == names_before
    _eventually(lambda: server.guard.open_calls == 0)


_SERVER = """
import sys
from ostracon.cluster.coordinator.deployment import Deployment
from ostracon.cluster.service.server import CoordinatorServer
server = CoordinatorServer(Deployment(sys.argv[1]), host="127.0.0.1", port=0, token="t" * 40)
server.start()
print(server.address, flush=True)
sys.stdin.read()
"""


def test_distinct_huge_health_watch_names_do_not_grow_the_server(tmp_path):
    import os
    import subprocess
    import sys

    # glibc's dynamic mmap threshold keeps big freed buffers in the heap (RSS at its high-water mark, not
    # memory held): fix it, so that RSS measures what the server keeps.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    process = subprocess.Popen([sys.executable, "-c", _SERVER, str(tmp_path / "state")], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=env)

    def rss_mib() -> float:
        with open(f"/proc/{process.pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024

    try:
        address = process.stdout.readline().strip()
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
        with grpc.insecure_channel(address, options=options) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30).status == \
                health_pb2.HealthCheckResponse.NOT_SERVING
            before = rss_mib()
            for k in range(8):  # 8 x 15 MiB: the stock servicer kept every one
                request = health_pb2.HealthCheckRequest(service=f"{k}-" + "n" * (15 * 1024 * 1024))
                with pytest.raises(grpc.RpcError) as caught:
                    list(health.Watch(request, timeout=30))
                assert caught.value.code() == C.RESOURCE_EXHAUSTED
                del request
            time.sleep(0.5)
            grown = rss_mib() - before
        assert grown < 50, f"the server grew by {grown:.0f} MiB"
    finally:
        process.stdin.close()
        process.wait(timeout=30)
    assert not (tmp_path / "state").exists()


def test_a_malformed_body_is_invalid_argument_logged_once(served, caplog):
    server, _ = served
    server.guard._bad_body_log = RateLimitedLog()  # a fresh minute for this client
    truncated = b"\x0a\x05ab"  # field 1, length 5, two bytes
    with grpc.insecure_channel(server.address) as channel, \
            caplog.at_level(logging.WARNING, logger="ostracon.cluster.service"):
        for _ in range(10):
            for method, metadata in ((HEALTH_CHECK, ()), (STATUS, AUTH), ("/ostracon.v1.Coordinator/Delete", AUTH)):
                with pytest.raises(grpc.RpcError) as caught:
                    channel.unary_unary(method)(truncated, metadata=metadata, timeout=5)
                assert caught.value.code() == C.INVALID_ARGUMENT, method
                assert "not a valid" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:  # a stream of requests: the same
            list(channel.stream_stream(REFLECTION)(iter([truncated]), timeout=5))
        assert caught.value.code() == C.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as caught:  # no token: refused before the body is looked at
            channel.unary_unary(STATUS)(truncated, timeout=5)
        assert caught.value.code() == C.UNAUTHENTICATED
    lines = [r for r in caplog.records if r.name.startswith("ostracon")]
    assert len(lines) == 1 and "malformed request body" in lines[0].getMessage(), [r.getMessage() for r in lines]
    assert lines[0].levelno == logging.WARNING and not lines[0].exc_info
    _prompt(server)


# ----- secrets and TLS files -----------------------------------------------------------------------------

STRONG = "s" * 40


@pytest.mark.parametrize("mode, content, words", [
    (0o644, STRONG, "mode is 0644"), (0o604, STRONG, "mode is 0604"), (0o620, STRONG, "mode is 0620"),
    (0o600, "short-token", "11 bytes, shorter than 32")])
def test_serve_refuses_a_token_file_others_can_read_or_a_short_token(tmp_path, mode, content, words):
    from ostracon.cluster.errors import ConfigError
    from ostracon.cluster.service.auth import load_server_token, load_token

    token_file = tmp_path / "token"
    token_file.write_text(content + "\n")
    token_file.chmod(mode)
    with pytest.raises(ConfigError, match=words):
        load_server_token(str(token_file), {})
    assert load_server_token(str(token_file), {"OSTRACON_ALLOW_WEAK_TOKEN": "1"}) == content  # tests, drills
    assert load_token(str(token_file), {}) == content  # a client reads it as it is


def test_serve_accepts_a_private_or_group_read_only_strong_token(tmp_path):
    from ostracon.cluster.errors import ConfigError
    from ostracon.cluster.service.auth import load_server_token

    token_file = tmp_path / "token"
    token_file.write_text(STRONG)
    for mode in (0o600, 0o400, 0o440):  # 0440: a Kubernetes Secret mounted for the pod's fsGroup
        token_file.chmod(mode)
        assert load_server_token(str(token_file), {}) == STRONG
    assert load_server_token(None, {"OSTRACON_TOKEN": STRONG}) == STRONG
    with pytest.raises(ConfigError, match=r"\$OSTRACON_TOKEN: the token is 5 bytes"):
        load_server_token(None, {"OSTRACON_TOKEN": "short"})


def test_ostracon_serve_names_a_world_readable_token_file_before_touching_the_state_dir(tmp_path):
    import os
    import subprocess
    import sys

    token_file = tmp_path / "token"
    token_file.write_text(STRONG)
    token_file.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if k not in ("OSTRACON_TOKEN", "OSTRACON_ALLOW_WEAK_TOKEN")}
    done = subprocess.run([sys.executable, "-m", "ostracon.cluster.cli", "serve", "--state-dir", str(tmp_path / "s"),
                           "--port", "0", "--token-file", str(token_file)], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "mode is 0644" in done.stderr and "chmod 600" in done.stderr, done.stderr
    assert not (tmp_path / "s").exists()


def test_a_tls_key_that_is_not_the_certificates_is_named_as_such(tmp_path):
    import subprocess

    from ostracon.cluster.errors import ConfigError
    from ostracon.cluster.service.server import tls_credentials

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    for name in ("a", "b"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(tmp_path / f"{name}.key"),
                        "-out", str(tmp_path / f"{name}.pem")], check=True, capture_output=True)
    assert tls_credentials(str(tmp_path / "a.pem"), str(tmp_path / "a.key")) is not None
    with pytest.raises(ConfigError, match="is not the private key of --tls-cert .*a.pem .*mismatch"):
        tls_credentials(str(tmp_path / "a.pem"), str(tmp_path / "b.key"))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a usable PEM certificate"):
        tls_credentials(str(tmp_path / "junk.pem"), str(tmp_path / "a.key"))
