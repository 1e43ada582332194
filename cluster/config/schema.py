"""Run configuration: TOML in, validated immutable dataclasses out.

Config is validated at the edge: unknown keys, wrong types and impossible
values are errors that name the key (``ConfigError``), raised before any
worker starts. Inside the system it is plain frozen data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ostracon.nodes.approximate_params import (
    PARAMS,
    FTParams,
    GAParams,
    L1SparseParams,
    NPOParams,
    RLParams,
    SalUnParams,
    SSDParams,
)

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PROTOCOLS = ("monna", "server")
LR_SCHEDULES = ("constant", "cosine", "step")
BACKENDS = ("local", "ray")
PLACEMENTS = ("none", "spread", "pack")
VOTES = ("majority", "mean_proba")
PRECISIONS = ("fp32",)  # "bf16" is refused: every run is exact (validate)


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"
    path: str = ""
    test_fraction: float = 0.2
    partition: str = "iid"
    alpha: float = 1.0
    classes_per_worker: int = 2
    samples: int = 10000
    features: int = 32
    classes: int = 10
    split: str = "all"  # "all": every worker holds data; "honest": only the honest ones (benchmarks)
    shape: tuple = ()  # parquet: each row's features reshaped to this (e.g. (3, 32, 32)); (): as stored
    per_worker: str = ""  # cross-silo: "path/or/uri/worker-{worker}.parquet", one file per data-holding worker


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingConfig:
    protocol: str = "monna"
    rule: str = "nna"
    rule_params: Mapping[str, Any] = field(default_factory=dict)
    pre: tuple = ("nnm",)  # NNM before NNA: the best worst case in bench/robustness.py (README)
    workers: int = 10
    f: int = 0
    rounds: int = 200
    batch_size: int = 32
    lr: float = 0.1
    lr_schedule: str = "constant"
    momentum: float = 0.9
    weight_decay: float = 0.0
    eval_every: int = 20
    round_deadline_s: float = 0.0
    precision: str = "fp32"


@dataclass(frozen=True)
class ByzantineConfig:
    count: int = 0
    behaviour: str = "sign_flip"
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateConfig:
    """What an approximate update must satisfy on every honest model of each group it changed, or
    it is rolled back and the request is carried out exactly."""

    max_test_drop: float = 0.03  # test accuracy may drop by at most this (fraction, vs before the update)
    max_retain_drop: float = 0.03  # same for the accuracy on the group's retained data
    max_forget_gap: float = 0.10  # forget-set accuracy may exceed test accuracy by at most this


@dataclass(frozen=True)
class UnlearningConfig:
    groups: int = 1
    slices: int = 1
    vote: str = "majority"
    method: str = "salun"  # the approximate method used when a request names none
    gate: GateConfig = field(default_factory=GateConfig)
    ft: FTParams = field(default_factory=FTParams)
    ga: GAParams = field(default_factory=GAParams)
    npo: NPOParams = field(default_factory=NPOParams)
    rl: RLParams = field(default_factory=RLParams)
    l1_sparse: L1SparseParams = field(default_factory=L1SparseParams)
    salun: SalUnParams = field(default_factory=SalUnParams)
    ssd: SSDParams = field(default_factory=SSDParams)

    def method_params(self, name: str):
        """The validated hyperparameters of approximate method ``name``."""
        if name not in PARAMS:
            raise ConfigError(f"unknown unlearning method {name!r}; choose one of: {', '.join(PARAMS)}")
        return getattr(self, name)


@dataclass(frozen=True)
class BackendConfig:
    name: str = "local"
    address: str = ""
    num_cpus: float = 0.0  # per worker actor; 0 = auto: the cluster's CPUs shared evenly, at most 1
    num_gpus: float = 0.0
    placement: str = "none"
    max_restarts: int = 3
    device: str = "cpu"
    start_timeout_s: float = 120.0


@dataclass(frozen=True)
class Config:
    seed: int = 0
    deterministic: bool = True
    threads: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    byzantine: ByzantineConfig = field(default_factory=ByzantineConfig)
    unlearning: UnlearningConfig = field(default_factory=UnlearningConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)

    @property
    def num_workers(self) -> int:
        """Workers over all groups."""
        return self.training.workers * self.unlearning.groups

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def replace(self, **overrides: Any) -> Config:
        """A new validated config with dotted-key overrides (``{"training.rounds": 10}``)."""
        return from_dict(_apply_overrides(self.to_dict(), overrides))


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "byzantine": ByzantineConfig,
    "unlearning": UnlearningConfig,
    "backend": BackendConfig,
}


def load(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read a TOML (or a resolved ``config.json``) file, apply ``overrides``, validate."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = json.load(fh) if path.endswith(".json") else tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory; -c expects a TOML config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied reading the config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); expected a TOML config file") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML/JSON: {exc}") from None
    return from_dict(_apply_overrides(raw, overrides or {}))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["training.rounds=10", "data.source=\\"npz\\""]`` -> dotted-key dict; values are TOML literals,
    and a value that is not a TOML literal is taken as a plain string (``data.source=npz``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out[key.strip()] = value
    return out


def _apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    data = json.loads(json.dumps(raw))  # deep copy of plain data
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: {part!r} is not a table")
        node[parts[-1]] = value
    return data


def from_dict(raw: Mapping[str, Any]) -> Config:
    """Build and validate a :class:`Config` from plain data; unknown keys are errors."""
    if not isinstance(raw, Mapping):
        raise ConfigError("config must be a table")
    top = {f.name for f in fields(Config)}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; known: {', '.join(sorted(top))}")
    kwargs: dict[str, Any] = {}
    for name in ("seed", "deterministic", "threads"):
        if name in raw:
            kwargs[name] = _typed(name, raw[name], type(getattr(Config(), name)))
    for section, cls in SECTIONS.items():
        kwargs[section] = _section(section, cls, raw.get(section, {}))
    if kwargs["data"].path and "://" not in kwargs["data"].path:
        # Stored absolute, so `unlearn` and `verify` find the data from any working directory (a URI is already).
        absolute = os.path.abspath(os.path.expanduser(kwargs["data"].path))
        kwargs["data"] = dataclasses.replace(kwargs["data"], path=absolute)
    config = Config(**kwargs)
    validate(config)
    return config


def _section(section: str, cls: type, raw: Any):
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{section}] must be a table, got {type(raw).__name__}")
    defaults = cls()
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in [{section}]: {', '.join(section + '.' + k for k in unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    values = {}
    for key, value in raw.items():
        default = getattr(defaults, key)
        if dataclasses.is_dataclass(default):  # a nested table, e.g. unlearning.gate, unlearning.ga
            values[key] = _section(f"{section}.{key}", type(default), value)
        else:
            values[key] = _typed(f"{section}.{key}", value, type(default))
    return cls(**values)


def _typed(key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if kind is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if key == "data.shape":
            return tuple(_shape_entry(key, v) for v in value)
        return tuple(_pre_entry(key, v) for v in value)
    if kind is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        return dict(value)
    raise AssertionError(kind)


def _shape_entry(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: each entry must be a positive integer, got {value!r}")
    return value


def _pre_entry(key: str, value: Any):
    """A pre-aggregation step: ``"nnm"`` or ``{name = "bucketing", bucket_size = 2}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str):
        return (value[0], dict(value[1]))
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        params = {k: v for k, v in value.items() if k != "name"}
        return (value["name"], params)
    raise ConfigError(f"{key}: each entry must be a name or a table with a 'name', got {value!r}")


def validate(config: Config) -> None:
    """Semantic checks that need no I/O beyond a file's existence; each error names its key."""
    from ostracon.aggregator import ATTACKS, PRE_AGGREGATIONS, RULES
    from ostracon.nodes.data import SOURCES
    from ostracon.nodes.models import MODELS, is_import_path, resolve
    from ostracon.nodes.worker import HONEST, WORKER_BEHAVIOURS

    d, m, t, b, u, be = (config.data, config.model, config.training, config.byzantine,
                         config.unlearning, config.backend)
    _choice("data.source", d.source, SOURCES)
    if d.per_worker:
        if d.source not in ("parquet", "npz"):
            raise ConfigError(f"data.per_worker: applies to data.source = \"parquet\" or \"npz\", not {d.source!r}")
        if "{worker}" not in d.per_worker:
            raise ConfigError(f"data.per_worker = {d.per_worker!r}: must contain {{worker}} (the worker index)")
        if d.path:
            raise ConfigError("data.path and data.per_worker: give one (per_worker names each worker's own file)")
        if d.partition != "iid":
            raise ConfigError(f"data.partition = {d.partition!r} with data.per_worker: each worker's file is its "
                              "partition; leave data.partition = \"iid\"")
    elif d.source == "npz":
        if not d.path:
            raise ConfigError("data.path: required when data.source = \"npz\"")
        if not os.path.isfile(d.path):
            raise ConfigError(f"data.path: npz file not found: {d.path}")
    if d.source == "parquet" and not d.path and not d.per_worker:
        raise ConfigError("data.path: required when data.source = \"parquet\" (a file, a directory of .parquet "
                          "files, or an s3:// URI)")
    if d.shape and d.source != "parquet":
        raise ConfigError(f"data.shape: applies to data.source = \"parquet\" only, not {d.source!r}")
    if d.source in ("mnist", "fashion_mnist", "cifar10") and not d.path:
        raise ConfigError(f"data.path: the local dataset root is required for data.source = {d.source!r}")
    _choice("data.partition", d.partition, ("iid", "dirichlet", "by_class"))
    _range("data.test_fraction", d.test_fraction, 0.0, 1.0, hi_open=True)
    _positive("data.alpha", d.alpha)
    for key in ("classes_per_worker", "samples", "features", "classes"):
        _positive(f"data.{key}", getattr(d, key))
    if is_import_path(m.name):
        try:
            resolve(m.name)  # imported now: a path that does not import stops here, before anything is written
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    else:
        _choice("model.name", m.name, (*MODELS, "'package.module:function'"))
    _choice("training.protocol", t.protocol, PROTOCOLS)
    _choice("training.rule", t.rule, RULES)
    for entry in t.pre:
        _choice("training.pre", entry if isinstance(entry, str) else entry[0], PRE_AGGREGATIONS)
    _positive("training.workers", t.workers)
    if t.f < 0 or 2 * t.f >= t.workers:
        raise ConfigError(
            f"training.f = {t.f} is impossible with training.workers = {t.workers} per group: need 0 <= f < workers/2"
        )
    for key in ("rounds", "batch_size", "eval_every"):
        _positive(f"training.{key}", getattr(t, key))
    _positive("training.lr", t.lr)
    _choice("training.lr_schedule", t.lr_schedule, LR_SCHEDULES)
    _range("training.momentum", t.momentum, 0.0, 1.0, hi_open=True)
    if t.weight_decay < 0:
        raise ConfigError(f"training.weight_decay must be >= 0, got {t.weight_decay}")
    if t.round_deadline_s < 0:
        raise ConfigError(f"training.round_deadline_s must be >= 0 (0 disables), got {t.round_deadline_s}")
    if t.precision == "bf16":
        raise ConfigError("training.precision = 'bf16': exact unlearning needs fp32 (every run is exact: a deletion "
                          "is certified bit-identical to a retrain); use \"fp32\"")
    _choice("training.precision", t.precision, PRECISIONS)
    if b.count < 0 or b.count >= t.workers:
        raise ConfigError(
            f"byzantine.count = {b.count} must be in [0, training.workers) = [0, {t.workers}): "
            "at least one worker per group must be honest"
        )
    behaviours = set(ATTACKS) | set(WORKER_BEHAVIOURS)
    if b.behaviour != HONEST:
        _choice("byzantine.behaviour", b.behaviour, sorted(behaviours))
    _positive("unlearning.groups", u.groups)
    _positive("unlearning.slices", u.slices)
    if u.slices > t.rounds:
        raise ConfigError(f"unlearning.slices = {u.slices} exceeds training.rounds = {t.rounds}: "
                          "every stage needs a round")
    _choice("unlearning.vote", u.vote, VOTES)
    _choice("unlearning.method", u.method, tuple(PARAMS))
    for name in PARAMS:
        try:
            getattr(u, name).validate(f"unlearning.{name}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for key in ("max_test_drop", "max_retain_drop", "max_forget_gap"):
        value = getattr(u.gate, key)
        if value < 0:
            raise ConfigError(f"unlearning.gate.{key} must be >= 0, got {value}")
    _choice("backend.name", be.name, BACKENDS)
    _choice("backend.placement", be.placement, PLACEMENTS)
    if be.num_cpus < 0 or be.num_gpus < 0:
        raise ConfigError("backend.num_cpus and backend.num_gpus must be >= 0")
    if be.max_restarts < 0:
        raise ConfigError(f"backend.max_restarts must be >= 0, got {be.max_restarts}")
    _check_device(be)
    if config.threads < 1:
        raise ConfigError(f"threads must be >= 1, got {config.threads}")
    _check_rule_call(config)


def _check_device(be: BackendConfig) -> None:
    """``backend.device`` against ``backend.num_gpus`` and, on the local backend, this machine's GPUs."""
    device = be.device
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", device):
        raise ConfigError(f"backend.device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if device == "cpu":
        if be.num_gpus > 0:
            raise ConfigError(f"backend.num_gpus = {be.num_gpus:g} with backend.device = 'cpu': the GPUs would sit "
                              "idle; set backend.device = \"cuda\" or backend.num_gpus = 0")
        return
    if be.num_gpus > 1 and not be.num_gpus.is_integer():
        raise ConfigError(f"backend.num_gpus = {be.num_gpus:g}: a fraction below 1 (GPUs shared) or a whole number")
    index = int(device.partition(":")[2] or 0)
    if be.name == "ray":
        # Ray shows each actor only the GPUs it reserved (CUDA_VISIBLE_DEVICES), numbered from 0.
        if be.num_gpus <= 0:
            raise ConfigError(f"backend.device = {device!r} with backend.name = 'ray' needs backend.num_gpus > 0 "
                              "(per worker actor, e.g. 0.25): an actor sees no GPU it did not reserve")
        visible = max(1, math.floor(be.num_gpus))
        if index >= visible:
            raise ConfigError(f"backend.device = {device!r} with backend.num_gpus = {be.num_gpus:g}: each Ray actor "
                              f"sees only its own {visible} GPU(s), numbered from 0; use backend.device = \"cuda\"")
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"backend.device = {device!r} with backend.name = {be.name!r}: no CUDA device on this "
                          "machine (torch.cuda.is_available() is False); use backend.device = \"cpu\" or a GPU machine")
    if index >= torch.cuda.device_count():
        raise ConfigError(f"backend.device = {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                          "device(s), numbered from 0")


def _check_rule_call(config: Config) -> None:
    """Call the configured rule and attack once on small dummy vectors, so bad params fail now."""
    import torch

    from ostracon.aggregator import ATTACKS, aggregate, get_attack

    t, b = config.training, config.byzantine
    n = t.workers
    vectors = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3) / (n * 3)
    try:
        aggregate(vectors, t.rule, f=t.f, pivot=vectors[0], pre=t.pre, **dict(t.rule_params))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"training.rule / training.rule_params / training.pre: {exc}") from None
    if b.count and b.behaviour in ATTACKS:
        params = dict(b.params)
        params.pop("num_byzantine", None)
        try:
            get_attack(b.behaviour)(
                vectors[: max(1, n - b.count)], f=t.f, num_byzantine=b.count,
                defense=lambda v: aggregate(v, "mean"), generator=torch.Generator().manual_seed(0), **params,
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"byzantine.params: {exc}") from None


def _choice(key: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: unknown value {value!r}; choose one of: {', '.join(allowed)}")


def _positive(key: str, value) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value}")


def _range(key: str, value, lo, hi, hi_open=False) -> None:
    if value < lo or value > hi or (hi_open and value == hi):
        raise ConfigError(f"{key} must be in [{lo}, {hi}{')' if hi_open else ']'}, got {value}")


def _plain(value):
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
