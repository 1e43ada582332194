"""What one worker receives from its group at the start of a round (docs/design.md, "Seams").

The training protocol (``ostracon.cluster.execution.protocols``) decides, the backend delivers, and
:meth:`ostracon.nodes.worker.Worker.receive` applies. Vectors are float32 arrays on the worker's
side; in transit they may be backend handles (Ray object references) that the backend resolves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np


@dataclass(frozen=True)
class Mix:
    """MoNNA: the round's half-models, ordered by worker index, to mix around the worker's own with its
    rule. ``vectors`` is a sequence of ``(d,)`` arrays, or one stacked ``(n, d)`` array."""

    vectors: Sequence[Any] | np.ndarray
    f: int | None = None  # the round's fault budget (silent workers spent part of it); None: the declared f


@dataclass(frozen=True)
class Assign:
    """Parameter server: the new parameters, taken as they are."""

    parameters: Any


Message: TypeAlias = Mix | Assign
