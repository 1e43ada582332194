"""Models by name, with seed-only initialisation, and the flat parameter vector.

Workers exchange models as one flat float32 vector (``flat_parameters``), so a
model's whole state must be its parameters: no model here has buffers. That is
why ``resnet18`` uses GroupNorm instead of BatchNorm — BatchNorm's running
mean/variance are buffers, which would not travel in the vector, would not be
averaged by the robust rule, and would make the deployed model depend on one
worker's local statistics.

Initialisation depends on ``seed`` alone: modules are built on the ``meta``
device (so the global RNG is neither read nor advanced), materialised, and every
parameter is then set from ``torch.Generator().manual_seed(seed)``, module by
module in registration order, with PyTorch's default schemes (Kaiming-uniform
weights with ``a = sqrt(5)``, biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``,
norm scales 1 and shifts 0).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

MODELS = ("logreg", "mlp", "cnn", "resnet18")


def build_model(
    name: str, *, input_shape: Sequence[int], num_classes: int, seed: int, **params: Any
) -> nn.Module:
    """Build model ``name`` for inputs of shape ``input_shape`` (one sample, no batch axis).

    Params: ``mlp``: ``hidden=64``, ``layers=1``; ``cnn``: ``channels=(32, 64)``,
    ``hidden=128``; ``resnet18``: ``width=64``, ``groups=32`` (GroupNorm groups, capped
    at the channel count); ``logreg``: none.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or any(s < 1 for s in input_shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive sizes, got {input_shape!r}")
    _check_int("num_classes", num_classes, minimum=2)
    builder, defaults = _BUILDERS[name]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        accepted = ", ".join(defaults) or "none"
        raise ValueError(f"unknown param(s) for model {name!r}: {', '.join(unknown)}; accepted: {accepted}")
    options = {**defaults, **params}
    with torch.device("meta"):  # no allocation, no draw from the global RNG
        model = builder(input_shape, num_classes, **options)
    model = model.to_empty(device="cpu")
    initialise(model, seed)
    if any(True for _ in model.buffers()):
        raise RuntimeError(f"model {name!r} has buffers; they would not be exchanged between workers")
    return model


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


def _logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat_size(input_shape), num_classes))


def _mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int, layers: int) -> nn.Module:
    _check_int("hidden", hidden)
    _check_int("layers", layers)
    blocks: list[nn.Module] = [nn.Flatten()]
    width = _flat_size(input_shape)
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    blocks.append(nn.Linear(width, num_classes))
    return nn.Sequential(*blocks)


def _cnn(input_shape: tuple[int, ...], num_classes: int, channels: Sequence[int], hidden: int) -> nn.Module:
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

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int, groups: int) -> None:
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
        logits: torch.Tensor = self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))
        return logits


_BUILDERS: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {
    "logreg": (_logreg, {}),
    "mlp": (_mlp, {"hidden": 64, "layers": 1}),
    "cnn": (_cnn, {"channels": (32, 64), "hidden": 128}),
    "resnet18": (ResNet18, {"width": 64, "groups": 32}),
}


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
