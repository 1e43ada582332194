"""Name -> function registries for rules, pre-aggregations and attacks.

A config says ``rule = "cwtm"``; the cluster looks the name up here. Each
registry maps a lower-case name to a plain function; registering twice under
one name is a programming error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

# Each kind has its own keyword arguments (``f``, ``pivot``, ``num_byzantine``, parameters...): the
# registries only promise a tensor back.
Function = Callable[..., torch.Tensor]
FunctionT = TypeVar("FunctionT", bound=Function)

RULES: dict[str, Function] = {}
PRE_AGGREGATIONS: dict[str, Function] = {}
ATTACKS: dict[str, Function] = {}


def _register(table: dict[str, Function], kind: str, name: str) -> Callable[[FunctionT], FunctionT]:
    def decorator(fn: FunctionT) -> FunctionT:
        key = name.lower()
        if key in table:
            raise ValueError(f"{kind} {key!r} is already registered")
        table[key] = fn
        return fn

    return decorator


def _lookup(table: dict[str, Function], kind: str, name: str) -> Function:
    try:
        return table[name.lower()]
    except (KeyError, AttributeError):
        known = ", ".join(sorted(table))
        raise ValueError(f"unknown {kind} {name!r}; known: {known}") from None


def register_rule(name: str) -> Callable[[FunctionT], FunctionT]:
    """Register ``fn(vectors, *, f=0, pivot=None, **params) -> (d,)`` as a rule."""
    return _register(RULES, "rule", name)


def register_pre_aggregation(name: str) -> Callable[[FunctionT], FunctionT]:
    """Register ``fn(vectors, *, f=0, **params) -> (m, d)`` as a pre-aggregation."""
    return _register(PRE_AGGREGATIONS, "pre-aggregation", name)


def register_attack(name: str) -> Callable[[FunctionT], FunctionT]:
    """Register ``fn(honest, *, f=0, num_byzantine=1, defense=None, generator=None, **params) -> (d,)``."""
    return _register(ATTACKS, "attack", name)


def get_rule(name: str) -> Function:
    return _lookup(RULES, "rule", name)


def get_pre_aggregation(name: str) -> Function:
    return _lookup(PRE_AGGREGATIONS, "pre-aggregation", name)


def get_attack(name: str) -> Function:
    return _lookup(ATTACKS, "attack", name)
