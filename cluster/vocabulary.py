"""The words of the product, each spelled once: deletion modes, request steps, operation states.

Every other module uses these members, never the literal strings (``tests/test_layout.py`` checks
it). Each is a ``str`` enum so its value is what the ledger, the certificates and the JSON output
have always held: ``json.dumps(DeletionMode.EXACT) == '"exact"'``, and an f-string shows the value.
The members know their own properties (``is_approximate``, ``is_final``), as Ray Train's
``TrainControllerStateType`` does (docs/design.md, "One vocabulary").
"""

from __future__ import annotations

from enum import Enum


class _Word(str, Enum):
    """A str enum whose ``str()`` and format are its value (``enum.StrEnum`` from Python 3.11)."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)

    @classmethod
    def parse(cls, value: str, what: str) -> _Word:
        """The member spelled ``value``; ``ValueError`` naming ``what`` and the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"{what}: unknown value {value!r}; choose one of: {', '.join(cls.values())}") from None


class DeletionMode(_Word):
    """How a deletion request is carried out (``ostracon unlearn --mode``, ``DeleteRequest.mode``)."""

    EXACT = "exact"  # SISA replay: bit-identical to a retrain without the ids
    APPROXIMATE = "approximate"  # a gated approximate update; exact if it fails the gate
    APPROXIMATE_THEN_EXACT = "approximate_then_exact"  # the approximate update at once, then the replay

    @property
    def is_approximate(self) -> bool:
        """Whether an approximate update runs (and a method applies)."""
        return self is not DeletionMode.EXACT

    @property
    def then_exact(self) -> bool:
        """Whether the exact replay follows a published approximate update."""
        return self is DeletionMode.APPROXIMATE_THEN_EXACT


class RequestStep(_Word):
    """The step a ledger request reached, in order (docs/design.md, "Durable-step order")."""

    JOURNALED = "journaled"  # acknowledged: the next command finishes it if this one dies
    TOMBSTONED = "tombstoned"  # every store agrees with the ledger
    APPROXIMATED = "approximated"  # approximate_then_exact: the approximate version is published
    PUBLISHED = "published"  # the commit point: new version and certificate in one transaction
    DONE = "done"  # derived files written
    ABANDONED = "abandoned"  # a replay that kept failing, rolled back before anything was published

    @property
    def is_final(self) -> bool:
        return self in (RequestStep.DONE, RequestStep.ABANDONED)

    @property
    def is_published(self) -> bool:
        """A model version carrying this request is published (its ids are gone from the served models)."""
        return self in (RequestStep.APPROXIMATED, RequestStep.PUBLISHED, RequestStep.DONE)

    @property
    def can_abandon(self) -> bool:
        """Nothing of it is published yet, so it may still be rolled back."""
        return self in (RequestStep.JOURNALED, RequestStep.TOMBSTONED)


class OperationState(_Word):
    """A coordinator operation's state: PENDING -> RUNNING -> SUCCEEDED | FAILED, or PENDING -> CANCELLED."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        return self in (OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED)


class CertificateStatus(_Word):
    """What a certificate says happened to the request."""

    DELETED = "deleted"
    NOOP = "noop"  # every id was already deleted: nothing changed


class PhaseOutcome(_Word):
    """How the approximate phase of an approximate-mode request ended (prefix of the certificate's text)."""

    PUBLISHED = "published"
    ROLLED_BACK = "rolled back"
    NOT_NEEDED = "not needed"
    INTERRUPTED = "interrupted"
