"""The checked-in gRPC stubs are exactly what grpcio-tools generates from the checked-in .proto."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "proto"
PROTO = "ostracon/v1/coordinator.proto"
GENERATED = ("coordinator_pb2.py", "coordinator_pb2_grpc.py", "coordinator_pb2.pyi")


def _regenerate(out: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is in the test extra")
    import grpc_tools

    include = str(Path(grpc_tools.__file__).parent / "_proto")  # google/protobuf/timestamp.proto
    code = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
                        f"--grpc_python_out={out}", str(PROTO_ROOT / PROTO)])
    assert code == 0, f"protoc failed on {PROTO}"


def test_checked_in_stubs_match_a_fresh_generation(tmp_path):
    _regenerate(tmp_path)
    fresh_dir, checked_in_dir = tmp_path / "ostracon" / "v1", PROTO_ROOT / "ostracon" / "v1"
    stale = [name for name in GENERATED if not filecmp.cmp(fresh_dir / name, checked_in_dir / name, shallow=False)]
    hint = ("regenerate with: python -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto "
            f"--grpc_python_out=proto proto/{PROTO} (grpcio-tools as pinned in pyproject's test extra)")
    assert not stale, f"stale stubs {stale}; {hint}"


def test_regeneration_detects_a_changed_contract(tmp_path):
    # The comparison above can fail: a proto with one more field generates different stubs.
    copy = tmp_path / "src"
    shutil.copytree(PROTO_ROOT / "ostracon", copy / "ostracon")
    proto = copy / PROTO
    proto.write_text(proto.read_text().replace("string idempotency_key = 4;",
                                               "string idempotency_key = 4;\n  string extra = 5;"))
    out = tmp_path / "out"
    out.mkdir()
    protoc = pytest.importorskip("grpc_tools.protoc")
    import grpc_tools

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    assert protoc.main(["protoc", f"-I{copy}", f"-I{include}", f"--python_out={out}", str(proto)]) == 0
    assert (out / "ostracon/v1/coordinator_pb2.py").read_bytes() != \
        (PROTO_ROOT / "ostracon/v1/coordinator_pb2.py").read_bytes()


def test_stubs_import_under_the_ostracon_namespace():
    from ostracon.v1 import coordinator_pb2, coordinator_pb2_grpc

    assert coordinator_pb2.DESCRIPTOR.package == "ostracon.v1"
    assert coordinator_pb2_grpc.CoordinatorStub.__module__ == "ostracon.v1.coordinator_pb2_grpc"
    service = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"]
    assert [m.name for m in service.methods] == ["Delete", "GetOperation", "ListOperations", "CancelOperation",
                                                 "WatchOperation", "GetCertificate", "Predict",
                                                 "GetClusterStatus"]
    assert service.methods_by_name["WatchOperation"].server_streaming


def test_contract_field_numbers_and_enum_values():
    from ostracon.v1 import coordinator_pb2 as pb

    def fields(message):
        return {f.name: f.number for f in message.DESCRIPTOR.fields}

    assert fields(pb.DeleteRequest) == {"sample_ids": 1, "mode": 2, "method": 3, "idempotency_key": 4}
    assert fields(pb.Operation) == {"id": 1, "state": 2, "progress": 3, "message": 4, "sample_ids": 5,
                                    "create_time": 6, "update_time": 7, "model_version": 8, "mode": 9}
    assert fields(pb.DeletionCertificate) == {
        "operation_id": 1, "mode": 2, "sample_ids": 3, "model_version_before": 4, "model_version_after": 5,
        "group_digests": 6, "gradient_evaluations": 7, "full_retrain_gradient_evaluations": 8, "json": 15}
    assert fields(pb.Tensor) == {"dtype": 1, "shape": 2, "data": 3}
    assert fields(pb.WorkerStatus) == {"index": 1, "group": 2, "byzantine": 3, "alive": 4, "restarts": 5,
                                       "node": 6}
    assert fields(pb.ClusterStatus) == {"workers": 1, "model_version": 2, "queue_depth": 3, "backend": 4}
    assert fields(pb.OperationEvent) == {"sequence": 1, "operation": 2}
    assert fields(pb.WatchOperationRequest) == {"operation_id": 1, "after_sequence": 2}
    assert fields(pb.ListOperationsResponse) == {"operations": 1, "next_page_token": 2}
    assert dict(pb.DeletionMode.items()) == {
        "DELETION_MODE_UNSPECIFIED": 0, "DELETION_MODE_EXACT": 1, "DELETION_MODE_APPROXIMATE": 2,
        "DELETION_MODE_APPROXIMATE_THEN_EXACT": 3}
    assert dict(pb.OperationState.items()) == {
        "OPERATION_STATE_UNSPECIFIED": 0, "OPERATION_STATE_PENDING": 1, "OPERATION_STATE_RUNNING": 2,
        "OPERATION_STATE_SUCCEEDED": 3, "OPERATION_STATE_FAILED": 4, "OPERATION_STATE_CANCELLED": 5}
    assert pb.Operation.DESCRIPTOR.fields_by_name["create_time"].message_type.full_name == \
        "google.protobuf.Timestamp"
