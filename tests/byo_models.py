"""User models for tests/test_user_model.py: ``model.name = "byo_models:buffered_net"``.

Importable in the driver because pytest puts ``tests/`` on ``sys.path``; the Ray test ships this file
to the workers with ``runtime_env={"py_modules": [byo_models]}`` (the documented way for a module that
is not installed on the cluster)."""

from __future__ import annotations

import math

import torch
from torch import nn


class BufferedNet(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear, with a registered buffer of its own: the number
    of rows its training forward passes saw (int64), and a running mean of its inputs (float32) that shifts
    them before the first layer. Every buffer is state that must be checkpointed and replayed exactly."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int, dropout: float) -> None:
        super().__init__()
        width = math.prod(input_shape)
        self.fc1 = nn.Linear(width, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.register_buffer("rows_seen", torch.zeros((), dtype=torch.int64))
        self.register_buffer("input_mean", torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        if self.training:
            with torch.no_grad():
                self.rows_seen += x.shape[0]
                self.input_mean.mul_(0.9).add_(0.1 * x.mean(0))
        x = x - self.input_mean
        out: torch.Tensor = self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))
        return out


def buffered_net(*, input_shape: tuple[int, ...], num_classes: int, hidden: int = 32,
                 dropout: float = 0.1) -> nn.Module:
    return BufferedNet(input_shape, num_classes, hidden, dropout)


def not_a_module(*, input_shape: tuple[int, ...], num_classes: int) -> object:
    return [input_shape, num_classes]


def broken(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    raise RuntimeError("this builder always fails\nsecond line")


NOT_CALLABLE = 3
