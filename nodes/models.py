"""Models by name: one registry of builders, seeded initialisation, buffers, the flat parameter vector.

``model.name`` picks a builder. The four built-ins (``logreg``, ``mlp``, ``cnn``, ``resnet18``) are
entries of :data:`BUILDERS`; any other name of the form ``"package.module:function"`` is imported
(:func:`resolve`) where the model is built, i.e. on each worker. Every builder follows one calling
convention::

    function(*, input_shape: tuple[int, ...], num_classes: int, **model.params) -> torch.nn.Module

``input_shape`` is one sample's shape (no batch axis), ``num_classes`` the label count; the module
maps a float32 batch ``(n, *input_shape)`` to logits ``(n, num_classes)``.

Initialisation depends on ``seed`` alone and never disturbs the global RNG:

- built-ins are built on the ``meta`` device (nothing is drawn), materialised, and every parameter
  is set from ``torch.Generator().manual_seed(seed)``, module by module in registration order, with
  PyTorch's default schemes (Kaiming-uniform weights with ``a = sqrt(5)``, biases
  ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, norm scales 1 and shifts 0) — bit for bit what every
  earlier version drew;
- a user function keeps its module's own initialisation (``reset_parameters`` and the like), run
  under ``torch.random.fork_rng()`` with the CPU generator seeded by ``seed``: the same seed gives
  the same module, and the caller's RNG state is restored afterwards.

Parameters and buffers. Workers exchange parameters only, as one flat float32 vector
(``flat_parameters``): that vector is what the robust rule mixes. Buffers (BatchNorm's running
statistics and ``num_batches_tracked``, any ``register_buffer``) are allowed: they are part of the
worker's state (checkpointed in their own dtype, digested, replayed exactly) but stay local to the
worker, never mixed. The built-ins have none (``resnet18`` uses GroupNorm). :func:`model_digest` is
:func:`parameter_digest` for a model without buffers, so their digests are what they always were.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

# What a builder is: ``build(*, input_shape, num_classes, **params) -> nn.Module`` (module docstring).
ModelFunction = Callable[..., nn.Module]


@dataclass(frozen=True)
class Builder:
    """One entry of the model registry: the function, and (built-ins only) its accepted params with defaults.

    ``defaults is None`` marks a user function: it takes whatever keyword arguments it declares, and keeps
    its own initialisation under the seeded generator (module docstring)."""

    function: ModelFunction
    defaults: Mapping[str, Any] | None = None

    @property
    def builtin(self) -> bool:
        return self.defaults is not None


def is_import_path(name: str) -> bool:
    """Whether ``name`` names a user function (``"package.module:function"``) rather than a built-in."""
    return ":" in name


def resolve(name: str) -> Builder:
    """The registry entry for ``name``: a built-in of :data:`BUILDERS`, or ``"package.module:function"``
    imported now. Raises ``ValueError`` (one line, naming ``model.name``) when it cannot be found."""
    if name in BUILDERS:
        return BUILDERS[name]
    if not is_import_path(name):
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}, or "
                         "'package.module:function'")
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"model.name = {name!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure to import is the same user error
        raise ValueError(f"model.name = {name!r}: cannot import {module_name!r} "
                         f"({type(exc).__name__}: {_first_line(exc)}); install it, or ship it to the "
                         "workers in a Ray runtime_env (py_modules or working_dir)") from None
    function: object = module
    for part in attribute.split("."):
        function = getattr(function, part, None)
        if function is None:
            raise ValueError(f"model.name = {name!r}: module {module_name!r} has no attribute {attribute!r}")
    if not callable(function):
        raise ValueError(f"model.name = {name!r}: {attribute!r} is not callable ({type(function).__name__})")
    return Builder(function)


def build_model(
    name: str, *, input_shape: Sequence[int], num_classes: int, seed: int, **params: Any
) -> nn.Module:
    """Build model ``name`` for inputs of shape ``input_shape`` (one sample, no batch axis).

    Built-in params: ``mlp``: ``hidden=64``, ``layers=1``; ``cnn``: ``channels=(32, 64)``,
    ``hidden=128``; ``resnet18``: ``width=64``, ``groups=32`` (GroupNorm groups, capped
    at the channel count); ``logreg``: none. A user function (``"package.module:function"``) gets
    ``params`` as keyword arguments. Errors are ``ValueError`` or ``TypeError``, one line each.
    """
    builder = resolve(name)
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or any(s < 1 for s in input_shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive sizes, got {input_shape!r}")
    _check_int("num_classes", num_classes, minimum=2)
    if builder.defaults is None:
        return _build_user(name, builder.function, input_shape, num_classes, seed, params)
    unknown = sorted(set(params) - set(builder.defaults))
    if unknown:
        accepted = ", ".join(builder.defaults) or "none"
        raise ValueError(f"unknown param(s) for model {name!r}: {', '.join(unknown)}; accepted: {accepted}")
    options = {**builder.defaults, **params}
    with torch.device("meta"):  # no allocation, no draw from the global RNG
        model = builder.function(input_shape=input_shape, num_classes=num_classes, **options)
    model = model.to_empty(device="cpu")
    initialise(model, seed)
    if any(True for _ in model.buffers()):  # a built-in must stay buffer-free (digests, fixtures)
        raise RuntimeError(f"built-in model {name!r} has buffers")
    return model


def _build_user(name: str, function: ModelFunction, input_shape: tuple[int, ...], num_classes: int, seed: int,
                params: Mapping[str, Any]) -> nn.Module:
    """Call a user function under a seeded, forked CPU generator; check what it returned."""
    with torch.random.fork_rng(devices=[]):  # the caller's RNG state comes back afterwards
        torch.default_generator.manual_seed(int(seed))
        try:
            model = function(input_shape=input_shape, num_classes=num_classes, **dict(params))
        except Exception as exc:  # noqa: BLE001 - any failure of user code is reported the same way
            raise ValueError(f"model {name!r} failed: {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"model {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    named = list(model.named_parameters())
    if not named:
        raise ValueError(f"model {name!r} returned a module without parameters: there is nothing to train")
    for what, p in named:
        if p.dtype != torch.float32 or p.device.type != "cpu":
            raise ValueError(f"model {name!r}: parameter {what!r} is {p.dtype} on {p.device}; "
                             "build float32 parameters on the CPU (workers move the model to their device)")
    return model.train()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def initialise(model: nn.Module, seed: int) -> nn.Module:
    """Set every parameter from ``torch.Generator().manual_seed(seed)`` (see the module docstring)."""
    g = torch.Generator().manual_seed(int(seed))
    done: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            own = dict(module.named_parameters(recurse=False))
            if not own:
                continue
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=g)
                if module.bias is not None:
                    fan_in = module.weight[0].numel()
                    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(module.bias, -bound, bound, generator=g)
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            else:
                raise TypeError(f"no initialisation rule for {type(module).__name__}")
            done.update(id(p) for p in own.values())
    missed = [n for n, p in model.named_parameters() if id(p) not in done]
    if missed:
        raise RuntimeError(f"parameters left uninitialised: {', '.join(missed)}")
    return model


# --------------------------------------------------------------------- architectures


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _flat_size(input_shape: tuple[int, ...]) -> int:
    return math.prod(input_shape)


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"model {name!r} needs image inputs (channels, height, width), got {input_shape!r}")
    return input_shape  # narrowed by the length check


def _logreg(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat_size(input_shape), num_classes))


def _mlp(*, input_shape: tuple[int, ...], num_classes: int, hidden: int, layers: int) -> nn.Module:
    _check_int("hidden", hidden)
    _check_int("layers", layers)
    blocks: list[nn.Module] = [nn.Flatten()]
    width = _flat_size(input_shape)
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    blocks.append(nn.Linear(width, num_classes))
    return nn.Sequential(*blocks)


def _cnn(*, input_shape: tuple[int, ...], num_classes: int, channels: Sequence[int], hidden: int) -> nn.Module:
    """Two conv(3x3)-ReLU-maxpool(2) stages, then a hidden dense layer (LeNet-like; 1x28x28 or 3x32x32)."""
    c, h, w = _image_shape("cnn", input_shape)
    channels = tuple(channels)
    if len(channels) != 2:
        raise ValueError(f"channels must be a pair (c1, c2), got {channels!r}")
    c1, c2 = (_check_int("channels", x) for x in channels)
    _check_int("hidden", hidden)
    if h < 4 or w < 4:
        raise ValueError(f"model 'cnn' needs images of at least 4x4, got {h}x{w}")
    return nn.Sequential(
        nn.Conv2d(c, c1, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * (h // 4) * (w // 4), hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    g = math.gcd(channels, groups)  # largest group count <= groups that divides channels
    return nn.GroupNorm(g, channels)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016) with GroupNorm: conv-GN-ReLU-conv-GN + shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _group_norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.norm2 = _group_norm(cout, groups)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _group_norm(cout, groups)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small images (CIFAR variant: 3x3 stem, no max-pool), GroupNorm throughout."""

    def __init__(self, *, input_shape: tuple[int, ...], num_classes: int, width: int, groups: int) -> None:
        super().__init__()
        c, _, _ = _image_shape("resnet18", input_shape)
        _check_int("width", width)
        _check_int("groups", groups)
        self.stem = nn.Conv2d(c, width, 3, stride=1, padding=1, bias=False)
        self.stem_norm = _group_norm(width, groups)
        stages = []
        cin = width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            stages += [BasicBlock(cin, cout, stride, groups), BasicBlock(cout, cout, 1, groups)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.stem_norm(self.stem(x)))
        out = self.stages(out)
        # Global average pooling as a mean over H, W: AdaptiveAvgPool2d has no deterministic CUDA backward
        # (it raises under torch.use_deterministic_algorithms); on the CPU both give the same bits.
        logits: torch.Tensor = self.head(out.mean(dim=(2, 3)))
        return logits


# The registry: name -> builder. ``"package.module:function"`` names resolve by import (:func:`resolve`).
BUILDERS: dict[str, Builder] = {
    "logreg": Builder(_logreg, {}),
    "mlp": Builder(_mlp, {"hidden": 64, "layers": 1}),
    "cnn": Builder(_cnn, {"channels": (32, 64), "hidden": 128}),
    "resnet18": Builder(ResNet18, {"width": 64, "groups": 32}),
}
MODELS = tuple(BUILDERS)  # the built-in names


# --------------------------------------------------------------------- flat parameter vector


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """All parameters, in ``named_parameters()`` order, as a detached float32 contiguous ``(d,)`` copy."""
    params = [p.detach().reshape(-1).to(torch.float32) for p in model.parameters()]
    if not params:
        return torch.zeros(0, dtype=torch.float32)
    return torch.cat(params).contiguous()


def num_parameters(model: nn.Module) -> int:
    """Length ``d`` of the model's flat parameter vector."""
    return sum(p.numel() for p in model.parameters())


def load_flat_parameters(model: nn.Module, vector: torch.Tensor) -> nn.Module:
    """Copy ``vector`` (``(d,)``, as from :func:`flat_parameters`) into ``model``'s parameters in place."""
    expected = num_parameters(model)
    if not isinstance(vector, torch.Tensor):
        raise ValueError(f"vector must be a torch.Tensor of shape ({expected},), got {type(vector).__name__}")
    if vector.dim() != 1 or vector.numel() != expected:
        raise ValueError(f"vector has shape {tuple(vector.shape)}, expected ({expected},) for this model")
    if not vector.is_floating_point():
        raise ValueError(f"vector must be floating point, got {vector.dtype}")
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(vector[offset : offset + n].view_as(p))
            offset += n
    return model


def parameter_digest(vector_or_model: torch.Tensor | nn.Module) -> str:
    """sha256 hex digest of the flat float32 little-endian parameter bytes (bit-exact identity)."""
    if isinstance(vector_or_model, nn.Module):
        vector = flat_parameters(vector_or_model)
    elif isinstance(vector_or_model, torch.Tensor):
        vector = vector_or_model.reshape(-1)
    else:
        raise ValueError(f"expected a torch.Tensor or nn.Module, got {type(vector_or_model).__name__}")
    data = vector.detach().to(torch.float32).cpu().contiguous().numpy().astype("<f4").tobytes()
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------- buffers (local to a worker, never mixed)


def model_buffers(model: nn.Module) -> dict[str, np.ndarray]:
    """Every buffer of ``model`` by name (``named_buffers()``), as a CPU numpy copy in its own dtype
    (``num_batches_tracked`` stays int64). Empty for the built-ins."""
    return {name: b.detach().cpu().numpy().copy() for name, b in model.named_buffers()}


def load_buffers(model: nn.Module, buffers: Mapping[str, Any]) -> nn.Module:
    """Copy ``buffers`` (as from :func:`model_buffers`) into ``model``'s buffers in place; the names,
    shapes and dtypes must be the model's own (nothing is cast)."""
    own = dict(model.named_buffers())
    if set(buffers) != set(own):
        missing, extra = sorted(set(own) - set(buffers)), sorted(set(buffers) - set(own))
        raise ValueError("buffers do not match the model: "
                         + "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                                       f"unknown {', '.join(extra)}" if extra else "") if part))
    with torch.no_grad():
        for name, target in own.items():
            value = buffers[name]
            source = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))
            if source.dtype != target.dtype or tuple(source.shape) != tuple(target.shape):
                raise ValueError(f"buffer {name!r} is {source.dtype} {tuple(source.shape)}, the model's is "
                                 f"{target.dtype} {tuple(target.shape)}")
            target.copy_(source.to(target.device))
    return model


def model_digest(theta: torch.Tensor | nn.Module, buffers: Mapping[str, Any] | None = None) -> str:
    """sha256 hex digest of a model's state: exactly :func:`parameter_digest` when it has no buffers;
    otherwise over the parameter bytes, then each buffer in name order (name, dtype, shape, little-endian
    bytes). ``theta`` may be the model itself (its buffers are then read from it)."""
    if isinstance(theta, nn.Module):
        buffers = model_buffers(theta) if buffers is None else buffers
    if not buffers:
        return parameter_digest(theta)
    vector = flat_parameters(theta) if isinstance(theta, nn.Module) else theta.reshape(-1)
    h = hashlib.sha256(vector.detach().to(torch.float32).cpu().contiguous().numpy().astype("<f4").tobytes())
    for name in sorted(buffers):
        value = buffers[name]
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        h.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        h.update(array.tobytes())
    return h.hexdigest()
