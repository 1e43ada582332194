"""Name -> function registries for rules, pre-aggregations and attacks.

A config says ``rule = "cwtm"``; the cluster looks the name up here. Each
registry maps a lower-case name to a plain function; registering twice under
one name is a programming error.
"""

from __future__ import annotations

from typing import Callable, Dict

RULES: Dict[str, Callable] = {}
PRE_AGGREGATIONS: Dict[str, Callable] = {}
ATTACKS: Dict[str, Callable] = {}


def _register(table: Dict[str, Callable], kind: str, name: str):
    def decorator(fn: Callable) -> Callable:
        key = name.lower()
        if key in table:
            raise ValueError(f"{kind} {key!r} is already registered")
        table[key] = fn
        return fn

    return decorator


def _lookup(table: Dict[str, Callable], kind: str, name: str) -> Callable:
    try:
        return table[name.lower()]
    except (KeyError, AttributeError):
        known = ", ".join(sorted(table))
        raise ValueError(f"unknown {kind} {name!r}; known: {known}") from None


def register_rule(name: str):
    """Register ``fn(vectors, *, f=0, pivot=None, **params) -> (d,)`` as a rule."""
    return _register(RULES, "rule", name)


def register_pre_aggregation(name: str):
    """Register ``fn(vectors, *, f=0, **params) -> (m, d)`` as a pre-aggregation."""
    return _register(PRE_AGGREGATIONS, "pre-aggregation", name)


def register_attack(name: str):
    """Register ``fn(honest, *, f=0, num_byzantine=1, defense=None, generator=None, **params) -> (d,)``."""
    return _register(ATTACKS, "attack", name)


def get_rule(name: str) -> Callable:
    return _lookup(RULES, "rule", name)


def get_pre_aggregation(name: str) -> Callable:
    return _lookup(PRE_AGGREGATIONS, "pre-aggregation", name)


def get_attack(name: str) -> Callable:
    return _lookup(ATTACKS, "attack", name)
