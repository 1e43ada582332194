"""The records that are the product: certificates, model-version records, unlearning debt, requests.

Each is a frozen dataclass with one serialiser (``to_dict``/``to_json``) and one parser
(``from_dict``/``from_json``). The bytes they write are the bytes earlier versions wrote (keys,
``sort_keys``, indentation), so a state directory made before these types existed still verifies
and its certificates re-serialise byte for byte (``tests/test_records.py`` checks a fixture made by
the older code). Nested parts whose shape belongs to one producer (a certificate's per-group rows,
evaluation summaries, failures) stay JSON objects: the record types their place, not their insides.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..vocabulary import CertificateStatus, DeletionMode, RequestStep

JSONObject = dict[str, Any]

CERTIFICATE_KIND = "ostracon.deletion_certificate/v1"


def _strs(values: Iterable[Any]) -> tuple[str, ...]:
    return tuple(str(v) for v in values)


def checkpoint_key(group: int, stage: int) -> str:
    """How a (group, stage) checkpoint is named in a version record: ``"G/S"``."""
    return f"{group}/{stage}"


@dataclass(frozen=True)
class CheckpointInfo:
    """A stage checkpoint as a version record knows it: the digest of the ids it trained on, its sha256."""

    data_digest: str
    sha256: str

    def to_dict(self) -> JSONObject:
        return {"data_digest": self.data_digest, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CheckpointInfo:
        return cls(str(raw["data_digest"]), str(raw["sha256"]))


@dataclass(frozen=True)
class ApproximateModel:
    """A group's published approximately-unlearned model file (relative to ``checkpoints/``)."""

    file: str
    sha256: str

    def to_dict(self) -> JSONObject:
        return {"file": self.file, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ApproximateModel:
        return cls(str(raw["file"]), str(raw["sha256"]))


@dataclass(frozen=True)
class Debt:
    """Unlearning debt of one group: ids deleted approximately whose influence its stage checkpoints still
    carry, from ``earliest_stage`` on; the next exact replay of the group starts no later and clears it."""

    ids: tuple[str, ...]
    earliest_stage: int

    def plus(self, ids: Iterable[str], stages: Iterable[int]) -> Debt:
        """This debt and more ids (deleted at ``stages``)."""
        return Debt(tuple(sorted(set(self.ids) | set(ids))), min([self.earliest_stage, *stages]))

    def to_dict(self) -> JSONObject:
        return {"ids": list(self.ids), "earliest_stage": self.earliest_stage}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Debt:
        return cls(_strs(raw["ids"]), int(raw["earliest_stage"]))


@dataclass(frozen=True)
class VersionRecord:
    """What the ledger keeps of a published model version (the ``versions.record`` column).

    ``approximate``/``debt`` are None when the record has no such key (a version no approximate
    deletion touched); ``phase`` is the approximate phase of an approximate_then_exact request."""

    worker_digests: Mapping[str, str]
    group_digests: Mapping[str, str]
    served_workers: Mapping[str, int]
    checkpoints: Mapping[str, CheckpointInfo]
    gradient_evaluations: int
    evaluation: JSONObject
    approximate: Mapping[str, ApproximateModel] | None = None
    debt: Mapping[str, Debt] | None = None
    phase: JSONObject | None = None

    def checkpoint(self, group: int, stage: int) -> CheckpointInfo:
        return self.checkpoints[checkpoint_key(group, stage)]

    def approximate_model(self, group: int) -> ApproximateModel | None:
        return (self.approximate or {}).get(str(group))

    def debt_of(self, group: int) -> Debt | None:
        return (self.debt or {}).get(str(group))

    @property
    def debts(self) -> Mapping[str, Debt]:
        return self.debt or {}

    @property
    def approximate_models(self) -> Mapping[str, ApproximateModel]:
        return self.approximate or {}

    def to_dict(self) -> JSONObject:
        out: JSONObject = {
            "worker_digests": dict(self.worker_digests),
            "group_digests": dict(self.group_digests),
            "served_workers": dict(self.served_workers),
            "checkpoints": {k: v.to_dict() for k, v in self.checkpoints.items()},
            "gradient_evaluations": self.gradient_evaluations,
            "evaluation": self.evaluation,
        }
        if self.approximate is not None:
            out["approximate"] = {g: m.to_dict() for g, m in self.approximate.items()}
        if self.debt is not None:
            out["debt"] = {g: d.to_dict() for g, d in self.debt.items()}
        if self.phase is not None:
            out["phase"] = self.phase
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> VersionRecord:
        approximate = raw.get("approximate")
        debt = raw.get("debt")
        return cls(
            worker_digests={str(k): str(v) for k, v in raw["worker_digests"].items()},
            group_digests={str(k): str(v) for k, v in raw["group_digests"].items()},
            served_workers={str(k): int(v) for k, v in raw["served_workers"].items()},
            checkpoints={str(k): CheckpointInfo.from_dict(v) for k, v in raw["checkpoints"].items()},
            gradient_evaluations=int(raw["gradient_evaluations"]),
            evaluation=dict(raw["evaluation"]),
            approximate=None if approximate is None else {str(g): ApproximateModel.from_dict(m)
                                                          for g, m in approximate.items()},
            debt=None if debt is None else {str(g): Debt.from_dict(d) for g, d in debt.items()},
            phase=None if raw.get("phase") is None else dict(raw["phase"]),
        )

    @classmethod
    def from_json(cls, text: str) -> VersionRecord:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class Request:
    """A deletion request as the ledger records it (the ``requests`` table)."""

    id: int
    mode: DeletionMode
    step: RequestStep
    requested: tuple[str, ...]
    ids: tuple[str, ...]  # the ids this request deletes (the others were already deleted)

    def to_dict(self) -> JSONObject:
        return {"id": self.id, "mode": self.mode.value, "step": self.step.value, "requested": list(self.requested),
                "ids": list(self.ids)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Request:
        return cls(int(raw["id"]), DeletionMode(raw["mode"]), RequestStep(raw["step"]), _strs(raw["requested"]),
                   _strs(raw["ids"]))

    @property
    def already_deleted(self) -> tuple[str, ...]:
        fresh = set(self.ids)
        return tuple(i for i in self.requested if i not in fresh)


@dataclass(frozen=True)
class Placement:
    """Where a deleted id lived."""

    group: int
    worker: int
    slice: int

    def to_dict(self) -> JSONObject:
        return {"group": self.group, "worker": self.worker, "slice": self.slice}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Placement:
        return cls(int(raw["group"]), int(raw["worker"]), int(raw["slice"]))


@dataclass(frozen=True)
class Cost:
    """A deletion's cost in gradient evaluations (samples x steps), against a full retrain."""

    gradient_evaluations: int
    full_retrain_gradient_evaluations: int

    @property
    def ratio(self) -> float:
        return round(self.gradient_evaluations / max(1, self.full_retrain_gradient_evaluations), 6)


@dataclass(frozen=True)
class Certificate:
    """What a deletion request did, as the ledger keeps it byte for byte and the certificate file holds it.

    ``mode`` is how the request was carried out (exact or approximate); ``requested_mode`` the mode asked
    for when it differs (an approximate-mode request that ended exact, with its ``phases``). Exact
    certificates carry the digests and what needed no replay; approximate ones the method, its params,
    the debt and what needed no update."""

    mode: DeletionMode
    request_id: int
    requested: tuple[str, ...]
    deleted: tuple[str, ...]
    already_deleted: tuple[str, ...]
    placement: Mapping[str, Placement]
    model_version_before: int
    model_version_after: int
    guarantee: str
    groups: Mapping[str, JSONObject]
    repairs: tuple[str, ...]
    failures: tuple[JSONObject, ...]
    cost: Cost
    evaluation: JSONObject
    time: str
    wall_time_s: float
    # exact
    worker_digests: Mapping[str, str] = field(default_factory=dict)
    group_digests: Mapping[str, str] = field(default_factory=dict)
    not_replayed: tuple[str, ...] = ()
    not_replayed_reason: str | None = None
    requested_mode: DeletionMode | None = None
    phases: tuple[JSONObject, ...] | None = None
    # approximate
    method: str | None = None
    params: JSONObject | None = None
    unlearning_debt: Mapping[str, Debt] = field(default_factory=dict)
    not_updated: tuple[str, ...] = ()

    status: ClassVar[CertificateStatus] = CertificateStatus.DELETED
    kind: ClassVar[str] = CERTIFICATE_KIND

    def to_dict(self) -> JSONObject:
        out: JSONObject = {
            "kind": self.kind,
            "mode": self.mode.value,
            "status": self.status.value,
            "guarantee": self.guarantee,
            "request_id": self.request_id,
            "requested": list(self.requested),
            "deleted": list(self.deleted),
            "already_deleted": list(self.already_deleted),
            "placement": {i: p.to_dict() for i, p in self.placement.items()},
            "model_version_before": self.model_version_before,
            "model_version_after": self.model_version_after,
            "groups": dict(self.groups),
            "repairs": list(self.repairs),
            "failures": list(self.failures),
            "gradient_evaluations": self.cost.gradient_evaluations,
            "full_retrain_gradient_evaluations": self.cost.full_retrain_gradient_evaluations,
            "cost_ratio": self.cost.ratio,
            "evaluation": self.evaluation,
            "time": self.time,
            "wall_time_s": self.wall_time_s,
        }
        if self.mode.is_approximate:
            out.update(method=self.method, params=self.params,
                       unlearning_debt={g: d.to_dict() for g, d in self.unlearning_debt.items()},
                       not_updated=list(self.not_updated))
        else:
            out.update(worker_digests=dict(self.worker_digests), group_digests=dict(self.group_digests),
                       not_replayed=list(self.not_replayed), not_replayed_reason=self.not_replayed_reason)
            if self.requested_mode is not None:
                out.update(requested_mode=self.requested_mode.value, phases=list(self.phases or ()))
        return out

    def to_json(self) -> str:
        """The exact bytes the ledger and the certificate file hold."""
        return encode(self.to_dict())

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Certificate:
        if raw.get("kind") != CERTIFICATE_KIND or raw.get("status") != CertificateStatus.DELETED.value:
            raise ValueError(f"not a deletion certificate of kind {CERTIFICATE_KIND}: "
                             f"kind {raw.get('kind')!r}, status {raw.get('status')!r}")
        mode = DeletionMode(raw["mode"])
        requested_mode = raw.get("requested_mode")
        return cls(
            mode=mode,
            request_id=int(raw["request_id"]),
            requested=_strs(raw["requested"]),
            deleted=_strs(raw["deleted"]),
            already_deleted=_strs(raw["already_deleted"]),
            placement={str(i): Placement.from_dict(p) for i, p in raw["placement"].items()},
            model_version_before=int(raw["model_version_before"]),
            model_version_after=int(raw["model_version_after"]),
            guarantee=str(raw["guarantee"]),
            groups={str(g): dict(row) for g, row in raw["groups"].items()},
            repairs=_strs(raw["repairs"]),
            failures=tuple(dict(f) for f in raw["failures"]),
            cost=Cost(int(raw["gradient_evaluations"]), int(raw["full_retrain_gradient_evaluations"])),
            evaluation=dict(raw["evaluation"]),
            time=str(raw["time"]),
            wall_time_s=float(raw["wall_time_s"]),
            worker_digests={str(k): str(v) for k, v in raw.get("worker_digests", {}).items()},
            group_digests={str(k): str(v) for k, v in raw.get("group_digests", {}).items()},
            not_replayed=_strs(raw.get("not_replayed", ())),
            not_replayed_reason=raw.get("not_replayed_reason"),
            requested_mode=None if requested_mode is None else DeletionMode(requested_mode),
            phases=None if raw.get("phases") is None else tuple(dict(p) for p in raw["phases"]),
            method=raw.get("method"),
            params=None if raw.get("params") is None else dict(raw["params"]),
            unlearning_debt={str(g): Debt.from_dict(d) for g, d in raw.get("unlearning_debt", {}).items()},
            not_updated=_strs(raw.get("not_updated", ())),
        )

    @classmethod
    def from_json(cls, text: str) -> Certificate:
        return cls.from_dict(json.loads(text))


# (group, stage) -> round -> worker -> LATE or BUSY (``ostracon.cluster.execution.backend``).
TimingEvents = dict[tuple[int, int], dict[int, dict[int, str]]]
# (group, stage) -> round -> the fault budget ``f`` that round's rule ran with, where it was not the declared one.
RoundBudgets = dict[tuple[int, int], dict[int, int]]


@dataclass
class Schedule:
    """What a replay imposes so that it runs as training did (docs/design.md, invariant 7).

    ``events``: the timing-dependent absences (a worker past the round deadline, or still busy).
    ``budgets``: each round's fault budget where silent workers spent part of it (``max(0, f - k)``
    with ``k`` workers silent; docs/design.md, "Silent workers spend the fault budget").
    ``silent_spend``: ``False`` for a state trained before silent workers spent the budget: its
    replays keep the declared ``f`` in every round, as its training did. Mutable: training records
    into it as rounds run."""

    events: TimingEvents = field(default_factory=dict)
    budgets: RoundBudgets = field(default_factory=dict)
    silent_spend: bool = True

    def forget(self, group: int, stage: int) -> None:
        """A failed attempt of ``group``'s ``stage`` is redone: what it recorded never happened."""
        self.events.pop((group, stage), None)
        self.budgets.pop((group, stage), None)

    def event_count(self) -> int:
        return sum(len(workers) for rounds in self.events.values() for workers in rounds.values())

    def for_stage(self, groups: Iterable[int], stage: int, t: int) -> dict[int, str]:
        """The recorded events of round ``t`` of ``stage`` for ``groups``: worker -> LATE or BUSY."""
        out: dict[int, str] = {}
        for g in groups:
            out.update(self.events.get((g, stage), {}).get(t, {}))
        return out


@dataclass(frozen=True)
class NothingToDelete:
    """The answer to a request whose ids were all deleted already: nothing changed, nothing is stored."""

    mode: DeletionMode
    requested: tuple[str, ...]
    model_version: int
    method: str | None = None
    operation_id: str | None = None

    status: ClassVar[CertificateStatus] = CertificateStatus.NOOP
    kind: ClassVar[str] = CERTIFICATE_KIND

    def to_dict(self) -> JSONObject:
        out: JSONObject = {"kind": self.kind, "mode": self.mode.value, "status": self.status.value,
                           "requested": list(self.requested), "already_deleted": list(self.requested),
                           "deleted": [], "model_version": self.model_version}
        if self.method is not None:
            out["method"] = self.method
        if self.operation_id is not None:
            out["operation_id"] = self.operation_id
        return out

    def to_json(self) -> str:
        return encode(self.to_dict())


def encode(body: Mapping[str, Any]) -> str:
    """A certificate's bytes: indented, sorted keys, one trailing newline."""
    return json.dumps(body, indent=2, sort_keys=True) + "\n"
