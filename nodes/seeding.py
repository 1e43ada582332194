"""Seeds derived from a path of names, so every random draw is reproducible.

Every draw in ostracon comes from a generator seeded by ``derive_seed(seed,
node, stage, step, ...)``: the same run replayed from any checkpoint draws the
same batches, on any backend and in any process.
"""

from __future__ import annotations

import hashlib
import os

import torch

# cuBLAS's deterministic workspace setting (PyTorch's reproducibility notes): 8 buffers of 4 MiB.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit integer from sha256 over ``seed`` and ``parts`` (stable across processes)."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(seed: int, *parts: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` seeded by ``derive_seed(seed, *parts)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *parts))
    return g


def set_deterministic(threads: int = 1) -> None:
    """Pin the thread count and select deterministic kernels (bit-identical results across processes).

    On a CUDA machine cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` for deterministic matmuls (without it they
    raise under deterministic algorithms); it is set here unless the environment already sets it. It is
    read when cuBLAS initialises, so Ray actors also get it in their ``runtime_env`` (``RayBackend.start``).
    """
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    # torch.use_deterministic_algorithms(True) also sets torch._inductor's flag, which imports the whole
    # compiler stack (~1 s per process, i.e. per Ray actor); ostracon never compiles, so set the eager flag.
    eager = getattr(torch._C, "_set_deterministic_algorithms", None)
    if eager is None:
        torch.use_deterministic_algorithms(True)
    else:
        eager(True, warn_only=False)
