"""The coordinator over gRPC: a real server on a free loopback port over a real, warm Deployment.

Auth and every input error of the contract are table-driven, each asserting the status code and that the
state directory is byte-identical afterwards; a hypothesis test sends random well-formed and malformed
requests; a generic client finds the API by reflection alone; the CLI serves and drives a deletion.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ostracon.cluster import CoordinatorClient
from ostracon.cluster.coordinator.deployment import HOLD_ENV, Deployment
from ostracon.cluster.execution.plan import make_plan
from ostracon.cluster.service.server import CoordinatorServer
from ostracon.cluster.service.tensors import encode
from ostracon.cluster.storage.ledger import open_ledger
from ostracon.cluster.unlearning import verify_state_dir
from ostracon.v1 import coordinator_pb2 as pb
from ostracon.v1 import coordinator_pb2_grpc as pb_grpc

from helpers import assert_consistent, retrain_digests, trainer_ids, tree_bytes

TOKEN = "t0ken-for-tests"
SERVE_TOKEN = "t0ken-for-tests-served-by-the-command-line"  # `ostracon serve` wants 32 bytes or more
AUTH = (("authorization", f"Bearer {TOKEN}"),)
C = grpc.StatusCode
MAX_IDS = 50
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Served:
    """A started Deployment on a copy of the trained state, behind a started server with a token."""

    def __init__(self, state, token=TOKEN):
        self.state = state
        self.deployment = Deployment(str(state), max_ids_per_request=MAX_IDS)
        self.deployment.start()
        self.server = CoordinatorServer(self.deployment, host="127.0.0.1", port=0, token=token)
        self.server.start()
        self.server.mark_serving()
        self.channel = grpc.insecure_channel(self.server.address)
        self.stub = pb_grpc.CoordinatorStub(self.channel)
        self.client = CoordinatorClient(self.server.address, token=token, timeout=60)

    def close(self):
        self.client.close()
        self.channel.close()
        self.server.stop()
        self.deployment.close(drain=True)

    def snapshot(self) -> dict[str, bytes]:
        """Every file's bytes but SQLite's shared-memory/WAL companions (a reader may touch them)."""
        return {p: b for p, b in tree_bytes(self.state).items() if not p.endswith(("-wal", "-shm", "-journal"))}

    def settle(self):
        """Wait (by watching, not sleeping) until every operation is final."""
        ops, token = self.client.operations(page_size=1000)
        for op in ops:
            if op["state"] in ("PENDING", "RUNNING"):
                list(self.client.watch(op["id"]))


@pytest.fixture(scope="module")
def served(tmp_path_factory, trained):
    state = tmp_path_factory.mktemp("served") / "state"
    shutil.copytree(trained, state)
    s = Served(state)
    yield s
    s.close()


def held_out_id(config):
    return str(make_plan(config).test_ids[0])


def code_of(call, *args, **kwargs):
    try:
        result = call(*args, **kwargs)
        if hasattr(result, "__next__"):  # a stream: its status arrives while reading it
            list(result)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return C.OK, ""


# ----- auth --------------------------------------------------------------------------------------------

def _health(channel, metadata=()):
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="ostracon.v1.Coordinator"), metadata=metadata, timeout=30)


def _reflection_services(channel):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    return set(ProtoReflectionDescriptorDatabase(channel).get_services())


AUTH_CASES = [
    ("no token", (), C.UNAUTHENTICATED),
    ("wrong token", (("authorization", "Bearer not-the-token"),), C.UNAUTHENTICATED),
    ("token prefix", (("authorization", f"Bearer {TOKEN[:-1]}"),), C.UNAUTHENTICATED),
    ("token without scheme", (("authorization", TOKEN),), C.UNAUTHENTICATED),
    ("other scheme", (("authorization", f"Basic {TOKEN}"),), C.UNAUTHENTICATED),
    ("right token", AUTH, C.OK),
    ("lower-case scheme", (("authorization", f"bearer {TOKEN}"),), C.OK),
]


@pytest.mark.parametrize("case, metadata, expected", AUTH_CASES, ids=[c[0] for c in AUTH_CASES])
def test_auth_table(served, config, case, metadata, expected):
    ids = trainer_ids(config, 1, seed=99)
    before = served.snapshot()
    calls = {
        "GetClusterStatus": lambda: served.stub.GetClusterStatus(pb.GetClusterStatusRequest(), metadata=metadata,
                                                                 timeout=30),
        "ListOperations": lambda: served.stub.ListOperations(pb.ListOperationsRequest(), metadata=metadata,
                                                             timeout=30),
        "Predict": lambda: served.stub.Predict(pb.PredictRequest(inputs=encode(
            np.zeros((1, *served.deployment.input_shape), np.float32))), metadata=metadata, timeout=30),
    }
    if expected != C.OK:  # the writing and streaming calls too: refused before any servicer code runs
        calls["Delete"] = lambda: served.stub.Delete(pb.DeleteRequest(sample_ids=ids), metadata=metadata,
                                                     timeout=30)
        calls["WatchOperation"] = lambda: served.stub.WatchOperation(
            pb.WatchOperationRequest(operation_id="anything"), metadata=metadata, timeout=30)
    for name, call in calls.items():
        code, details = code_of(call)
        assert code == expected, (case, name, details)
        if expected == C.UNAUTHENTICATED:
            assert "token" in details
    assert served.snapshot() == before, case
    # health and reflection answer whatever the token
    assert _health(served.channel, metadata).status == health_pb2.HealthCheckResponse.SERVING
    assert "ostracon.v1.Coordinator" in _reflection_services(served.channel)


def test_an_unknown_method_without_a_token_is_denied_too(served):
    call = served.channel.unary_unary("/ostracon.v1.Coordinator/NoSuchMethod")
    code, _ = code_of(call, b"", timeout=30)
    assert code == C.UNAUTHENTICATED
    code, _ = code_of(call, b"", timeout=30, metadata=AUTH)
    assert code == C.UNIMPLEMENTED


# ----- input errors ------------------------------------------------------------------------------------

def _error_cases(config, input_shape):
    ids = trainer_ids(config, 3, seed=7)
    ok_x = np.zeros((2, *input_shape), np.float32)
    bad_bytes = encode(ok_x)
    bad_bytes.data = bad_bytes.data[:-1]
    return [
        ("empty ids", "Delete", pb.DeleteRequest(), C.INVALID_ARGUMENT, "sample_ids"),
        ("empty string id", "Delete", pb.DeleteRequest(sample_ids=[ids[0], ""]), C.INVALID_ARGUMENT,
         "sample_ids[1]"),
        ("too many ids", "Delete", pb.DeleteRequest(sample_ids=[f"x{i}" for i in range(MAX_IDS + 1)]),
         C.INVALID_ARGUMENT, str(MAX_IDS)),
        ("unknown ids", "Delete", pb.DeleteRequest(sample_ids=[ids[0], "no-such-id-1", "no-such-id-2"]),
         C.NOT_FOUND, "no-such-id-1"),
        ("held-out id", "Delete", pb.DeleteRequest(sample_ids=[held_out_id(config)]), C.FAILED_PRECONDITION,
         held_out_id(config)),
        ("bad mode value", "Delete", pb.DeleteRequest(sample_ids=ids[:1], mode=17), C.INVALID_ARGUMENT, "mode"),
        ("unknown method", "Delete",
         pb.DeleteRequest(sample_ids=ids[:1], mode=pb.DELETION_MODE_APPROXIMATE, method="no_such_method"),
         C.INVALID_ARGUMENT, "no_such_method"),
        ("method with exact", "Delete", pb.DeleteRequest(sample_ids=ids[:1], method="salun"),
         C.INVALID_ARGUMENT, "method"),
        ("unknown operation", "GetOperation", pb.GetOperationRequest(operation_id="no-such-op"), C.NOT_FOUND,
         "no-such-op"),
        ("empty operation id", "GetOperation", pb.GetOperationRequest(), C.INVALID_ARGUMENT, "operation_id"),
        ("cancel unknown", "CancelOperation", pb.CancelOperationRequest(operation_id="no-such-op"), C.NOT_FOUND,
         "no-such-op"),
        ("cancel empty id", "CancelOperation", pb.CancelOperationRequest(), C.INVALID_ARGUMENT, "operation_id"),
        ("watch unknown", "WatchOperation", pb.WatchOperationRequest(operation_id="no-such-op"), C.NOT_FOUND,
         "no-such-op"),
        ("watch empty id", "WatchOperation", pb.WatchOperationRequest(), C.INVALID_ARGUMENT, "operation_id"),
        ("watch negative sequence", "WatchOperation",
         pb.WatchOperationRequest(operation_id="x", after_sequence=-1), C.INVALID_ARGUMENT, "after_sequence"),
        ("certificate unknown", "GetCertificate", pb.GetCertificateRequest(operation_id="no-such-op"),
         C.NOT_FOUND, "no-such-op"),
        ("certificate empty id", "GetCertificate", pb.GetCertificateRequest(), C.INVALID_ARGUMENT, "operation_id"),
        ("negative page size", "ListOperations", pb.ListOperationsRequest(page_size=-1), C.INVALID_ARGUMENT,
         "page_size"),
        ("predict no inputs", "Predict", pb.PredictRequest(), C.INVALID_ARGUMENT, "inputs"),
        ("predict wrong dtype", "Predict", pb.PredictRequest(inputs=encode(ok_x.astype(np.int32))),
         C.INVALID_ARGUMENT, "inputs.dtype"),
        ("predict wrong shape", "Predict",
         pb.PredictRequest(inputs=encode(np.zeros((2, int(np.prod(input_shape)) + 1), np.float32))),
         C.INVALID_ARGUMENT, "inputs.shape"),
        ("predict byte length", "Predict", pb.PredictRequest(inputs=bad_bytes), C.INVALID_ARGUMENT, "inputs.data"),
    ]


def test_input_errors_table(served, config):
    cases = _error_cases(config, served.deployment.input_shape)
    for case, method, request, expected, named in cases:
        before = served.snapshot()
        code, details = code_of(getattr(served.stub, method), request, metadata=AUTH, timeout=60)
        assert code == expected, (case, details)
        assert named in details, (case, details)
        assert served.snapshot() == before, case


def test_the_raw_id_count_is_bounded_before_any_id_is_read(served, config):
    before = served.snapshot()
    # Empty ids past the limit: the count is refused first (walking them would name sample_ids[0]).
    code, details = code_of(served.stub.Delete, pb.DeleteRequest(sample_ids=[""] * (MAX_IDS + 1)), metadata=AUTH,
                            timeout=60)
    assert code == C.INVALID_ARGUMENT
    assert details.startswith(f"sample_ids: {MAX_IDS + 1} ids exceed max_ids_per_request = {MAX_IDS}"), details
    # A million copies of one id (3 MB): refused on the count, nothing walked, nothing stored.
    many = pb.DeleteRequest(sample_ids=trainer_ids(config, 1, seed=3) * 1_000_000)
    code, details = code_of(served.stub.Delete, many, metadata=AUTH, timeout=60)
    assert code == C.INVALID_ARGUMENT and "1000000 ids exceed max_ids_per_request" in details, details
    assert served.snapshot() == before


def test_reusing_an_idempotency_key_with_another_body_is_already_exists(served, config):
    a, b = trainer_ids(config, 2, seed=11)
    first = served.client.delete([a], idempotency_key="key-1")
    again = served.client.delete([a], mode="exact", idempotency_key="key-1")
    assert again["id"] == first["id"]  # same body: the same operation
    served.settle()
    before = served.snapshot()
    code, details = code_of(served.stub.Delete, pb.DeleteRequest(sample_ids=[a, b], idempotency_key="key-1"),
                            metadata=AUTH, timeout=60)
    assert code == C.ALREADY_EXISTS, details
    assert served.snapshot() == before


# ----- the happy path ----------------------------------------------------------------------------------

def test_delete_watch_certificate_status_and_predict(served, config):
    ids = trainer_ids(config, 2, seed=21)
    version_before = served.client.status()["model_version"]
    op = served.client.delete(ids)
    assert op["state"] in ("PENDING", "RUNNING") and sorted(op["sample_ids"]) == sorted(ids)
    assert op["mode"] == "exact" and op["create_time"] > 0
    events = list(served.client.watch(op["id"]))
    sequences = [s for s, _ in events]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences))) and sequences[0] == 1
    final = events[-1][1]
    assert final["state"] == "SUCCEEDED", final
    assert final["model_version"] > version_before
    # resuming after the final event ends at once with nothing
    assert list(served.client.watch(op["id"], after_sequence=sequences[-1])) == []
    # resuming in the middle replays the rest
    assert [s for s, _ in served.client.watch(op["id"], after_sequence=1)] == sequences[1:]
    assert served.client.operation(op["id"]) == final
    cert = served.client.certificate(op["id"])
    assert set(ids) <= set(cert["deleted"])
    raw = served.stub.GetCertificate(pb.GetCertificateRequest(operation_id=op["id"]), metadata=AUTH, timeout=30)
    assert json.loads(raw.json) == cert and raw.operation_id == op["id"]
    assert raw.mode == pb.DELETION_MODE_EXACT and raw.model_version_after == cert["model_version_after"]
    assert dict(raw.group_digests) == cert["group_digests"]
    status = served.client.status()
    assert status["model_version"] == final["model_version"] and status["backend"] == "local"
    assert status["workers"] and all(w["alive"] for w in status["workers"])
    x = np.random.default_rng(0).standard_normal((5, *served.deployment.input_shape))
    labels, probabilities, version = served.client.predict(x)  # float64 inputs are accepted
    assert labels.shape == (5,) and probabilities.shape[0] == 5 and version == final["model_version"]
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    listed, _ = served.client.operations(page_size=1)
    assert listed[0]["id"] == op["id"]  # newest first


def test_unspecified_mode_is_applied_as_exact(served, config):
    [sample] = trainer_ids(config, 1, seed=31)
    op = served.stub.Delete(pb.DeleteRequest(sample_ids=[sample]), metadata=AUTH, timeout=60)
    assert op.mode == pb.DELETION_MODE_EXACT
    assert op.create_time.seconds > 0 and op.update_time.ToNanoseconds() >= op.create_time.ToNanoseconds()
    served.settle()


# ----- random requests ---------------------------------------------------------------------------------

_text = st.text(max_size=12)
_ids = st.lists(st.one_of(_text, st.sampled_from(["0", "1", "digits-1", ""])), max_size=4)
_tensor = st.builds(pb.Tensor, dtype=st.sampled_from(["float32", "float64", "int8", "", "object", "f4"]),
                    shape=st.lists(st.integers(-3, 70), max_size=4), data=st.binary(max_size=300))
_requests = st.one_of(
    st.tuples(st.just("Delete"), st.builds(pb.DeleteRequest, sample_ids=_ids, mode=st.integers(0, 6),
                                           method=_text, idempotency_key=_text)),
    st.tuples(st.just("GetOperation"), st.builds(pb.GetOperationRequest, operation_id=_text)),
    st.tuples(st.just("CancelOperation"), st.builds(pb.CancelOperationRequest, operation_id=_text)),
    st.tuples(st.just("GetCertificate"), st.builds(pb.GetCertificateRequest, operation_id=_text)),
    st.tuples(st.just("WatchOperation"), st.builds(pb.WatchOperationRequest, operation_id=_text,
                                                   after_sequence=st.integers(-2, 5))),
    st.tuples(st.just("ListOperations"), st.builds(pb.ListOperationsRequest, page_size=st.integers(-2, 2000),
                                                   page_token=_text)),
    st.tuples(st.just("Predict"), st.builds(pb.PredictRequest, inputs=_tensor)),
    st.tuples(st.just("GetClusterStatus"), st.just(pb.GetClusterStatusRequest())),
)


def test_random_requests_never_crash_the_server(served, config):
    real = trainer_ids(config, 4, seed=41)

    @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(request=_requests, use_real=st.booleans())
    def check(request, use_real):
        method, message = request
        if method == "Delete" and use_real and message.sample_ids:
            message.sample_ids[0] = real[len(message.sample_ids) % len(real)]
        if method == "WatchOperation" and message.operation_id:
            return  # a real watch would follow a live operation to its end; unknown ids are covered above
        code, details = code_of(getattr(served.stub, method), message, metadata=AUTH, timeout=120)
        assert code not in (C.UNKNOWN, C.INTERNAL, C.UNIMPLEMENTED), (method, message, details)

    check()
    served.settle()
    assert _health(served.channel).status == health_pb2.HealthCheckResponse.SERVING
    assert served.client.status()["workers"]


# ----- reflection --------------------------------------------------------------------------------------

def test_a_generic_client_finds_the_api_by_reflection_and_deletes(served, config):
    from google.protobuf import descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    database = ProtoReflectionDescriptorDatabase(served.channel)  # no ostracon stubs below this line
    assert {"ostracon.v1.Coordinator", "grpc.health.v1.Health"} <= set(database.get_services())
    pool = descriptor_pool.DescriptorPool(database)
    method = pool.FindServiceByName("ostracon.v1.Coordinator").FindMethodByName("Delete")
    Request = message_factory.GetMessageClass(method.input_type)
    Response = message_factory.GetMessageClass(method.output_type)
    ids = trainer_ids(config, 1, seed=51)
    request = json_format.ParseDict({"sampleIds": ids, "mode": "DELETION_MODE_EXACT"}, Request())
    delete = served.channel.unary_unary("/ostracon.v1.Coordinator/Delete", request_serializer=Request.SerializeToString,
                                        response_deserializer=Response.FromString)
    operation = json_format.MessageToDict(delete(request, metadata=AUTH, timeout=60))
    assert operation["sampleIds"] == ids and operation["mode"] == "DELETION_MODE_EXACT" and operation["id"]
    final = list(served.client.watch(operation["id"]))[-1][1]
    assert final["state"] == "SUCCEEDED"


# ----- the command line --------------------------------------------------------------------------------

def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ostracon.cluster.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO)


def test_cli_serve_delete_wait_certificate_status_ops_and_sigterm(tmp_path, trained, config):
    state = tmp_path / "state"
    shutil.copytree(trained, state)
    token_file = tmp_path / "token"
    token_file.write_text(f"  {SERVE_TOKEN}\n")
    token_file.chmod(0o600)  # `ostracon serve` refuses a token file others can read, or a short token
    env = {k: v for k, v in os.environ.items() if k not in ("OSTRACON_TOKEN", "OSTRACON_ALLOW_WEAK_TOKEN")}
    server = subprocess.Popen([sys.executable, "-m", "ostracon.cluster.cli", "serve", "--state-dir", str(state),
                               "--port", "0", "--token-file", str(token_file)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        line = server.stdout.readline()  # blocks until the server is healthy (or gone)
        assert line.startswith("serving ostracon.v1.Coordinator on 127.0.0.1:"), (line, server.poll())
        address = line.split(" on ", 1)[1].strip()
        assert json.loads((state / "server.json").read_text()) == {"address": address, "pid": server.pid}
        client_env = {**env, "OSTRACON_TOKEN": SERVE_TOKEN}
        ids = trainer_ids(config, 2, seed=61)
        done = _cli("delete", "--target", address, "--ids", ",".join(ids), "--wait", env=client_env)
        assert done.returncode == 0, done.stderr
        first, last = done.stdout.strip().splitlines()[0], done.stdout.strip().splitlines()[-1]
        op_id = first.split()[1]
        assert " SUCCEEDED 100% " in last and op_id in last
        done = _cli("certificate", "--target", address, op_id, "--json", "--token-file", str(token_file), env=env)
        assert done.returncode == 0, done.stderr
        assert set(ids) <= set(json.loads(done.stdout)["deleted"])
        done = _cli("status", "--target", address, env=client_env)
        assert done.returncode == 0 and "backend local" in done.stdout, done.stderr
        done = _cli("ops", "--target", address, "--json", env=client_env)
        assert done.returncode == 0 and json.loads(done.stdout)[0]["id"] == op_id, done.stderr
        done = _cli("status", "--target", address, env={**env, "OSTRACON_TOKEN": "wrong"})
        assert done.returncode == 2 and done.stderr.strip() == "ostracon: error: UNAUTHENTICATED: invalid bearer token"
        done = _cli("delete", "--target", address, "--ids", "no-such-id", env=client_env)
        assert done.returncode == 2 and done.stderr.startswith("ostracon: error: NOT_FOUND: "), done.stderr
        assert "no-such-id" in done.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=300)
    assert server.returncode == 0, err
    assert not (state / "server.json").exists()


# ----- kill -9 of the server process ---------------------------------------------------------------------

def _start_server(state, env, log_path):
    """``ostracon serve`` on a free loopback port; stderr to a file (a full pipe would block the server)."""
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-m", "ostracon.cluster.cli", "serve", "--state-dir", str(state),
                                 "--port", "0"], stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO)


def _address_of(server, log_path):
    line = server.stdout.readline()  # blocks until the server is healthy (or gone)
    assert line.startswith("serving ostracon.v1.Coordinator on 127.0.0.1:"), (line, server.poll(),
                                                                              log_path.read_text()[-3000:])
    return line.split(" on ", 1)[1].strip()


def _wait_until_running(client, op_id):
    for _, op in client.watch(op_id):
        if op["state"] == "RUNNING":
            return
    raise AssertionError(f"{op_id} ended without running: {client.operation(op_id)}")


def _journal_rows(state):
    with open_ledger(state, readonly=True) as ledger:
        return {op_id: (s, json.loads(ids), rid)
                for op_id, s, ids, rid in ledger._query("SELECT id, state, sample_ids, request_id FROM operations")}


def test_kill_9_of_the_server_with_running_and_pending_deletions_then_restart_completes_each_once(
        tmp_path, trained, config):
    state = tmp_path / "state"
    shutil.copytree(trained, state)
    ids = trainer_ids(config, 4, seed=71)
    hold = tmp_path / "hold-replay"
    hold.touch()  # the first replay waits at its first round until the others are queued behind it
    env = {k: v for k, v in os.environ.items() if k not in ("OSTRACON_TOKEN", "OSTRACON_FAULT", HOLD_ENV)}
    crashing = _start_server(state, {**env, "OSTRACON_FAULT": "deletion.promoted:*", HOLD_ENV: str(hold)},
                             tmp_path / "crash.log")
    acknowledged: dict[str, list[str]] = {}
    try:
        with CoordinatorClient(_address_of(crashing, tmp_path / "crash.log"), timeout=60) as client:
            first = client.delete([ids[0]])
            acknowledged[first["id"]] = [ids[0]]
            _wait_until_running(client, first["id"])
            for sample in ids[1:]:
                acknowledged[client.delete([sample])["id"]] = [sample]
            assert [client.operation(o)["state"] for o in acknowledged] == ["RUNNING"] + ["PENDING"] * 3
            hold.unlink()  # the replay goes on and the server kills itself at its first promotion
        crashing.wait(timeout=600)
    finally:
        if crashing.poll() is None:
            crashing.kill()
    assert crashing.returncode == -signal.SIGKILL, (tmp_path / "crash.log").read_text()[-3000:]

    # Every acknowledged deletion is durable: RUNNING (carried by the one unfinished ledger request) or PENDING.
    rows = _journal_rows(state)
    assert {o: r[:2] for o, r in rows.items()} == {o: (s, acknowledged[o]) for o, s in
                                                  zip(acknowledged, ["RUNNING"] + ["PENDING"] * 3, strict=True)}
    with open_ledger(state, readonly=True) as ledger:
        assert [list(r.ids) for r in ledger.requests(unfinished_only=True)] == [[ids[0]]]

    restarted = _start_server(state, env, tmp_path / "restart.log")
    try:
        with CoordinatorClient(_address_of(restarted, tmp_path / "restart.log"), timeout=120) as client:
            finals = {o: list(client.watch(o))[-1][1] for o in acknowledged}
            assert {o: op["state"] for o, op in finals.items()} == dict.fromkeys(acknowledged, "SUCCEEDED")
            certificates = {o: client.certificate(o) for o in acknowledged}
            assert len(client.operations(page_size=100)[0]) == len(acknowledged), "no operation was duplicated"
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.communicate(timeout=300)
    assert restarted.returncode == 0, (tmp_path / "restart.log").read_text()[-3000:]

    for o, cert in certificates.items():
        assert set(acknowledged[o]) <= set(cert["deleted"]), o
    on_disk = [i for name in sorted(os.listdir(state / "certificates"))
               for i in json.loads((state / "certificates" / name).read_text())["deleted"]]
    assert sorted(on_disk) == sorted(ids), "each acknowledged id in exactly one certificate"
    rows = _journal_rows(state)
    assert all(s == "SUCCEEDED" for s, _, _ in rows.values())
    assert {o: rid for o, (_, _, rid) in rows.items()} == {o: c["request_id"] for o, c in certificates.items()}
    with open_ledger(state, readonly=True) as ledger:
        assert sorted(r.id for r in ledger.requests()) == sorted({c["request_id"] for c in certificates.values()})
    assert_consistent(state, config, ids, retrain_digests(config, ids))  # ledger = stores = certificates = models
    report = verify_state_dir(state)
    assert report["ok"] and not report["pending"], report["failures"]
