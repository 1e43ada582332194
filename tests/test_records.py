"""Typed records against a state directory written by the code before them (tests/fixtures/state_v0).

The records are the product: a state directory an earlier release wrote must verify with this code,
and every certificate and version record it holds must parse and serialise back to the same bytes
(docs/design.md, "Typed records")."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from ostracon.cluster.storage.ledger import open_ledger
from ostracon.cluster.storage.records import Certificate, NothingToDelete, Placement, VersionRecord, encode
from ostracon.cluster.unlearning import unlearn_state_dir, verify_state_dir
from ostracon.cluster.vocabulary import CertificateStatus, DeletionMode, RequestStep

FIXTURE = Path(__file__).parent / "fixtures" / "state_v0"


@pytest.fixture
def old_state(tmp_path):
    """A copy: every command locks, and the WAL-mode ledger grows files next to it."""
    return shutil.copytree(FIXTURE, tmp_path / "state_v0")


def rows(state: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_an_old_state_directory_verifies(old_state):
    report = verify_state_dir(old_state)
    assert report["ok"], report["failures"]
    assert report["model_version"] == 4 and report["deleted"] == 4
    assert report["groups"] and all(g["match"] for g in report["groups"].values())


def test_old_certificates_reserialise_byte_for_byte(old_state):
    stored = rows(old_state, "SELECT name, body FROM certificates ORDER BY request_id")
    assert [name for name, _ in stored] == ["deletion-000001-v2.json", "deletion-000002-v4.json"]
    for name, body in stored:
        assert (old_state / "certificates" / name).read_text() == body
        cert = Certificate.from_json(body)
        assert cert.to_json() == body, name
        assert encode(cert.to_dict()) == body
    exact, then_exact = (Certificate.from_json(body) for _, body in stored)
    assert exact.mode is DeletionMode.EXACT and exact.requested_mode is None and exact.deleted == ("12", "115")
    assert then_exact.mode is DeletionMode.EXACT and then_exact.requested_mode is DeletionMode.APPROXIMATE_THEN_EXACT
    assert then_exact.phases is not None and [p["mode"] for p in then_exact.phases] == ["approximate", "exact"]
    assert then_exact.status is CertificateStatus.DELETED
    assert set(then_exact.placement) == {"139", "110"} and all(isinstance(p, Placement)
                                                               for p in then_exact.placement.values())


def test_old_version_records_reserialise_byte_for_byte(old_state):
    stored = rows(old_state, "SELECT version, record FROM versions ORDER BY version")
    assert [v for v, _ in stored] == [1, 2, 3, 4]
    for version, text in stored:
        record = VersionRecord.from_json(text)
        assert record.to_json() == text, f"version {version}"
    approximate = VersionRecord.from_json(stored[2][1])  # the approximate phase of request 2
    assert set(approximate.debts) and approximate.phase is not None
    assert all(m.file.startswith("group-") for m in approximate.approximate_models.values())
    final = VersionRecord.from_json(stored[3][1])
    assert final.debts == {} and final.approximate_models == {}
    state = json.loads((old_state / "state.json").read_text())
    assert state["group_digests"] == dict(final.group_digests)


def test_old_requests_read_as_vocabulary(old_state):
    ledger = open_ledger(str(old_state), readonly=True)
    try:
        requests = ledger.requests()
    finally:
        ledger.close()
    assert [(r.id, r.mode, r.step) for r in requests] == [
        (1, DeletionMode.EXACT, RequestStep.DONE), (2, DeletionMode.APPROXIMATE_THEN_EXACT, RequestStep.DONE)]
    assert requests[1].ids == ("139", "110")


def test_new_code_unlearns_from_an_old_state_directory(old_state):
    before = {n: (old_state / "certificates" / n).read_bytes() for n in ("deletion-000001-v2.json",
                                                                         "deletion-000002-v4.json")}
    again = unlearn_state_dir(old_state, ["12"])
    assert again == NothingToDelete(DeletionMode.EXACT, ("12",), 4).to_dict()
    cert = unlearn_state_dir(old_state, ["7"])
    assert cert["model_version_before"] == 4 and cert["model_version_after"] == 5 and cert["deleted"] == ["7"]
    assert Path(cert["certificate_path"]).read_text() == Certificate.from_dict(
        {k: v for k, v in cert.items() if k != "certificate_path"}).to_json()
    for name, body in before.items():  # earlier certificates are never rewritten
        assert (old_state / "certificates" / name).read_bytes() == body
    report = verify_state_dir(old_state)
    assert report["ok"], report["failures"]
    assert report["model_version"] == 5 and report["deleted"] == 5
