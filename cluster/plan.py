"""From a config to a concrete run: the data each worker holds and each worker's spec.

Global worker ``j`` belongs to group ``j // m`` (``m = training.workers``);
the last ``byzantine.count`` workers of every group are Byzantine. Every
sample's placement (test split, worker, slice) is a function of its id,
label and the seed (``ostracon.nodes.partition.place``), so a run on the data without
some ids puts every other sample exactly where it was.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from ostracon.nodes.data import Dataset, load_dataset
from ostracon.nodes.partition import place
from ostracon.nodes.worker import HONEST, WORKER_BEHAVIOURS, WorkerSpec

from .backends import WorkerData
from .config import Config


@dataclass(frozen=True)
class RunPlan:
    config: Config
    specs: tuple[WorkerSpec, ...]
    data: dict[int, WorkerData]
    test_features: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    test_ids: np.ndarray
    # Every training id of the source data -> (group, worker, slice), excluded ids included.
    placement: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)

    def group_workers(self, group: int) -> list[int]:
        return [s.index for s in self.specs if s.group == group]

    def trainers(self, group: int) -> list[int]:
        return [s.index for s in self.specs if s.group == group and s.trains]

    def honest(self, group: int) -> list[int]:
        return [s.index for s in self.specs if s.group == group and not s.is_byzantine]

    def attackers(self, group: int) -> list[int]:
        return [s.index for s in self.specs if s.group == group and s.attack is not None]

    @property
    def groups(self) -> list[int]:
        return list(range(self.config.unlearning.groups))


def load_config_dataset(config: Config) -> Dataset:
    d = config.data
    if d.source == "synthetic":
        return load_dataset("synthetic", seed=config.seed, samples=d.samples, features=d.features, classes=d.classes)
    return load_dataset(d.source, path=d.path or None)


def stage_rounds(config: Config) -> list[int]:
    """Rounds of each SISA stage: the training budget split as evenly as possible over ``slices`` stages."""
    total, r = config.training.rounds, config.unlearning.slices
    return [total // r + (1 if s < total % r else 0) for s in range(r)]


def stage_start(config: Config, stage: int) -> int:
    """The global round at which ``stage`` begins."""
    return sum(stage_rounds(config)[:stage])


def make_plan(config: Config, state_dir: str | os.PathLike | None = None,
              dataset: Dataset | None = None, exclude: Iterable[str] = ()) -> RunPlan:
    """Load the data, place every sample, and describe every worker; the rows of ``exclude`` (the
    deleted ids) are placed like the others but given to no worker."""
    dataset = dataset if dataset is not None else load_config_dataset(config)
    excluded = np.isin(dataset.ids, np.asarray(sorted(exclude), dtype=str)) if exclude else np.zeros(len(dataset), bool)
    d, t, b, u = config.data, config.training, config.byzantine, config.unlearning
    n = config.num_workers
    placement = place(
        dataset.ids, dataset.labels, seed=config.seed, num_workers=n, num_slices=u.slices,
        test_fraction=d.test_fraction, partition=d.partition, alpha=d.alpha,
        classes_per_worker=d.classes_per_worker, num_classes=dataset.num_classes,
    )
    specs, data = [], {}
    for j in range(n):
        group, position = divmod(j, t.workers)
        byzantine = position >= t.workers - b.count
        behaviour = b.behaviour if byzantine else HONEST
        params = dict(b.params) if byzantine else {}
        if byzantine and behaviour not in WORKER_BEHAVIOURS:  # attacks need the Byzantine head count
            params["num_byzantine"] = b.count
        specs.append(WorkerSpec(
            index=j, group=group, seed=config.seed, model=config.model.name,
            input_shape=tuple(dataset.feature_shape), num_classes=dataset.num_classes,
            model_params=dict(config.model.params), protocol=t.protocol, rule=t.rule, f=t.f,
            rule_params=dict(t.rule_params), pre=tuple(t.pre), lr=t.lr, lr_schedule=t.lr_schedule,
            total_rounds=t.rounds, momentum=t.momentum, weight_decay=t.weight_decay,
            batch_size=t.batch_size, behaviour=behaviour, behaviour_params=params,
            device=config.backend.device,
        ))
        rows = (placement.worker == j) & ~excluded
        data[j] = WorkerData(
            ids=dataset.ids[rows], features=dataset.features[rows], labels=dataset.labels[rows],
            slices=placement.slice[rows],
            store_path=None if state_dir is None else os.path.join(os.fspath(state_dir), "stores", f"worker-{j}"),
        )
    test = placement.is_test
    train_rows = np.flatnonzero(~test)
    groups = placement.worker[train_rows] // t.workers
    where = {sid: (int(g), int(j), int(k)) for sid, g, j, k in zip(
        dataset.ids[train_rows].tolist(), groups.tolist(), placement.worker[train_rows].tolist(),
        placement.slice[train_rows].tolist())}
    return RunPlan(config, tuple(specs), data, dataset.features[test], dataset.labels[test], dataset.num_classes,
                   dataset.ids[test], where)


def dataset_digest(dataset: Dataset) -> str:
    """sha256 over a dataset's ids, labels and feature bytes: the source data a state was trained on."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(dataset.ids).tobytes())
    h.update(np.ascontiguousarray(dataset.labels, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(dataset.features, dtype=np.float32).tobytes())
    return h.hexdigest()


def ids_digest(ids: Iterable[str]) -> str:
    """sha256 over the sorted ids, newline-separated: names a training set without revealing its rows."""
    h = hashlib.sha256()
    for i in sorted(str(x) for x in ids):
        h.update(i.encode())
        h.update(b"\n")
    return h.hexdigest()
