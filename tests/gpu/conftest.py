"""Every test under ``tests/gpu`` needs a CUDA device: without one each is skipped, none fails.

The skip is applied here to every item collected from this directory (``pytest.mark.skipif``, the same mark
each module also sets as its ``pytestmark``), so a new module cannot forget it. The Ray runtime is this
directory's own: it is given the machine's GPUs, which the CPU-only ``ray_runtime`` of ``tests/conftest.py``
does not ask for.
"""

from __future__ import annotations

import os
import pathlib

import pytest
import torch

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

_HERE = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in pathlib.Path(str(item.path)).parents:
            item.add_marker(NEEDS_CUDA)


@pytest.fixture(scope="module")
def ray_gpu_runtime():
    """One local Ray runtime per module with this machine's GPUs (and at most 8 CPUs)."""
    import ray

    ray.shutdown()
    ray.init(num_cpus=min(8, os.cpu_count() or 1), num_gpus=torch.cuda.device_count(), log_to_driver=False,
             include_dashboard=False)
    yield
    ray.shutdown()
