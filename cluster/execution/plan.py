"""From a config to a concrete run: the data each worker holds and each worker's spec.

Global worker ``j`` belongs to group ``j // m`` (``m = training.workers``);
the last ``byzantine.count`` workers of every group are Byzantine. Every
sample's placement (test split, worker, slice) is a function of its id,
label and the seed (``ostracon.nodes.partition.place``), so a run on the data without
some ids puts every other sample exactly where it was.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ostracon.nodes.data import Dataset, load_dataset
from ostracon.nodes.sources import (
    NO_HOLDER,
    PlacementSpec,
    ShardSource,
    SourceIndex,
    SourceSpec,
    held_out_digest,
    read_features,
    read_index,
    register_dataset,
    shard_digest,
    source_spec,
)
from ostracon.nodes.worker import HONEST, WORKER_BEHAVIOURS, WorkerSpec, spec_model

from ..config import Config
from ..errors import ConfigError, DataError, SourceChangedError
from .id_index import HOLDER, IdIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """Who holds what: every worker's spec and shard description, the ids and their placement. No rows:
    the held-out split's features are read from the source when first evaluated on (``test_features``)."""

    config: Config
    specs: tuple[WorkerSpec, ...]
    shards: dict[int, ShardSource]
    num_classes: int
    # Every training id of the source data -> (group, worker, slice), excluded ids included.
    placement: IdIndex
    source: SourceSpec
    test_ids: np.ndarray
    test_labels: np.ndarray
    test_positions: np.ndarray
    rule: PlacementSpec
    holders: dict[int, int]  # worker -> its placement position (NO_HOLDER: it holds no rows)
    expected_test_digest: str | None = None

    @functools.cached_property
    def test_features(self) -> np.ndarray:
        """The held-out rows' features, read from the source on first use and kept (tools, the demo and
        the approximate gate's metrics; training evaluates on the workers), checked against the recorded
        digest."""
        return self._read_held_out()

    def check_held_out(self) -> None:
        """Check the held-out rows against the recorded digest, streaming them (nothing is kept)."""
        if self.expected_test_digest is None:
            return
        found = held_out_digest(self.source, self.rule)
        if found != self.expected_test_digest:
            raise SourceChangedError(
                f"the held-out rows of {self.source.describe()} differ from those this state was trained on "
                f"(sha256 {found[:16]}... != recorded {self.expected_test_digest[:16]}...); exact deletion and "
                "verification need the original data")

    def _read_held_out(self) -> np.ndarray:
        self.check_held_out()
        return read_features(self.source, self.test_positions)

    def with_deleted(self, ids: Iterable[str]) -> RunPlan:
        """This plan with every id of ``ids`` (training ids) held by no worker any more: only the shards
        holding them change, and nothing is placed again (a deletion costs its ids, not the dataset)."""
        wanted = sorted(set(ids))
        rows = self.placement.select(wanted)
        holders = self.placement.where[rows, HOLDER] if len(rows) else np.zeros(0, dtype=np.int64)
        by_holder: dict[int, set[str]] = {}
        for sid, h in zip(wanted, holders.tolist(), strict=True):
            by_holder.setdefault(int(h), set()).add(sid)
        shards = {j: dataclasses.replace(s, deleted=tuple(sorted(set(s.deleted) | by_holder[self.holders[j]])))
                  if self.holders[j] in by_holder and not by_holder[self.holders[j]] <= set(s.deleted) else s
                  for j, s in self.shards.items()}
        updated = dataclasses.replace(self, shards=shards)
        if "test_features" in self.__dict__:  # the held-out rows did not change: keep them (no re-read)
            updated.__dict__["test_features"] = self.__dict__["test_features"]
        return updated

    def shard_ids(self, worker: int) -> np.ndarray:
        """The ids worker ``worker`` holds (its placement position's minus the deleted), sorted: what its
        store holds, computed from the index alone."""
        shard, holder = self.shards[worker], self.holders[worker]
        ids = self.placement.held_by(holder) if holder != NO_HOLDER else np.zeros(0, dtype=str)
        return ids[~np.isin(ids, np.asarray(shard.deleted, dtype=str))] if shard.deleted else ids

    def group_workers(self, group: int) -> list[int]:
        return [s.index for s in self.specs if s.group == group]

    def trainers(self, group: int) -> list[int]:
        return [s.index for s in self.specs if s.group == group and s.trains]

    def stateful(self, group: int) -> list[int]:
        """Workers whose state a checkpoint holds: the trainers and the attackers that keep state."""
        return [s.index for s in self.specs if s.group == group and s.keeps_state]

    def honest(self, group: int) -> list[int]:
        return [s.index for s in self.specs if s.group == group and not s.is_byzantine]

    def attackers(self, group: int) -> list[int]:
        return [s.index for s in self.specs if s.group == group and s.attack is not None]

    def trainers_all(self) -> list[int]:
        """Every worker that trains on its data, over all groups."""
        return [s.index for s in self.specs if s.trains]

    @property
    def groups(self) -> list[int]:
        return list(range(self.config.unlearning.groups))


def load_config_dataset(config: Config) -> Dataset:
    """The configured dataset; a file that cannot be read as that source is a :class:`DataError` naming it."""
    d = config.data
    try:
        if d.source == "synthetic":
            return load_dataset("synthetic", seed=config.seed, samples=d.samples, features=d.features,
                                classes=d.classes)
        if d.source == "parquet":
            return load_dataset("parquet", path=d.path, shape=d.shape)
        return load_dataset(d.source, path=d.path or None)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _data_error(config, exc) from exc


def _data_error(config: Config, exc: BaseException) -> DataError:
    """A source that cannot be read, as one line naming ``data.path`` (or ``data.source``)."""
    d = config.data
    if d.path:
        where = "data.path" if d.path in str(exc) else f"data.path = {d.path!r}"
    else:
        where = f"data.source = {d.source!r}"
    return DataError(f"{where}: {exc}")


def config_source(config: Config, dataset: Dataset | None = None) -> SourceSpec:
    """The source workers read: the config's ``data`` section, or ``dataset`` held in this process
    (``train(dataset=...)``: the local backend only)."""
    if dataset is not None:
        return register_dataset(dataset)
    spec = source_spec(config.data, config.seed)
    if config.data.per_worker:  # cross-silo: the data-holding workers' own files, in placement order
        template = config.data.per_worker
        return dataclasses.replace(spec, path=template,
                                   parts=tuple(template.replace("{worker}", str(j)) for j in data_holders(config)))
    return spec


def read_config_index(config: Config, source: SourceSpec | None = None) -> SourceIndex:
    """The source's ids and labels; a file that cannot be read is a :class:`DataError` naming it."""
    try:
        return read_index(source if source is not None else config_source(config))
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _data_error(config, exc) from exc


def _worker_counts(config: Config, train_samples: int) -> str:
    return (f"{train_samples} training sample(s) (after data.test_fraction = {config.data.test_fraction}) for "
            f"{config.num_workers} workers (training.workers = {config.training.workers} x unlearning.groups = "
            f"{config.unlearning.groups})")


def require_sample_per_worker(config: Config, train_samples: int) -> None:
    """Fewer samples than workers leaves some worker without data: refuse the run, naming the counts."""
    if train_samples < config.num_workers:
        raise DataError(f"{_worker_counts(config, train_samples)}: every worker needs data; "
                        "use fewer workers or groups, or more data")


def warn_if_sparse(config: Config, plan: RunPlan) -> None:
    """Warn when workers hold on average less than one batch (e.g. many groups over a small dataset),
    and name the workers that hold no data at all (they sit out every round)."""
    sizes = {j: len(plan.shard_ids(j)) for j in plan.shards}
    train_samples = sum(sizes.values())
    empty = [j for j in plan.trainers_all() if sizes[j] == 0]
    if empty:
        log.warning("worker(s) %s hold no training sample (data.partition = %r): they sit out every round",
                    ", ".join(map(str, empty[:20])) + (" ..." if len(empty) > 20 else ""), config.data.partition)
    per_worker = train_samples / config.num_workers
    if per_worker < config.training.batch_size:
        log.warning("%s: about %.1f per worker, fewer than training.batch_size = %d; each local step "
                    "resamples the same few rows (fewer groups or workers would train better)",
                    _worker_counts(config, train_samples), per_worker, config.training.batch_size)


def validate_run(config: Config) -> SourceIndex:
    """Read the source's index and build one model: data and model errors surface before anything is
    written (the features of each worker's rows are read, and checked, by the worker).

    Returns the index, so the caller can train without reading it again.
    """
    index = read_config_index(config)
    plan = make_plan(config, index=index)
    warn_if_sparse(config, plan)
    try:
        spec_model(plan.specs[0])
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model.params = {dict(config.model.params)} for model.name = "
                          f"{config.model.name!r}: {exc}") from None
    return index


def stage_rounds(config: Config) -> list[int]:
    """Rounds of each SISA stage: the training budget split as evenly as possible over ``slices`` stages."""
    total, r = config.training.rounds, config.unlearning.slices
    return [total // r + (1 if s < total % r else 0) for s in range(r)]


def stage_start(config: Config, stage: int) -> int:
    """The global round at which ``stage`` begins."""
    return sum(stage_rounds(config)[:stage])


def make_plan(config: Config, state_dir: str | os.PathLike | None = None,
              dataset: Dataset | None = None, exclude: Iterable[str] = (), *, index: SourceIndex | None = None,
              digests: Mapping[str, Any] | None = None) -> RunPlan:
    """Place every sample of the source's index and describe every worker; the rows of ``exclude``
    (the deleted ids) are placed like the others but held by no worker. ``digests`` (recorded by
    training: ``shards`` by placement position, ``test``) are what the rows must still hash to.
    Reads ids and labels only (``index``, when given, is reused)."""
    source = config_source(config, dataset)
    index = index if index is not None else read_config_index(config, source)
    d, t, b, u = config.data, config.training, config.byzantine, config.unlearning
    n = config.num_workers
    holders = data_holders(config)
    if d.split == "honest" and state_dir is not None and b.count and b.behaviour in WORKER_BEHAVIOURS:
        # their copies of honest rows are outside the ledger: a deletion would leave them behind
        raise ConfigError(f"data.split = \"honest\" with byzantine.behaviour = {b.behaviour!r} gives the Byzantine "
                          "workers copies of honest rows, which deletions do not track: in-memory runs only")
    rule = PlacementSpec(seed=config.seed, num_workers=len(holders), num_slices=u.slices,
                         test_fraction=d.test_fraction, partition=d.partition, alpha=d.alpha,
                         classes_per_worker=d.classes_per_worker)
    try:
        placement = rule.place(index)
    except ValueError as exc:
        raise DataError(f"data: {exc}") from None
    if index.part is not None:  # cross-silo: a row belongs to the worker whose file holds it
        placement.worker[:] = np.where(placement.is_test, -1, index.part)
    require_sample_per_worker(config, int((~placement.is_test).sum()))
    excluded = np.isin(index.ids, np.asarray(sorted(exclude), dtype=str)) if exclude else np.zeros(len(index), bool)
    shard_digests = dict((digests or {}).get("shards") or {})
    specs, shards, holder_of = [], {}, {}
    for j in range(n):
        group, position = divmod(j, t.workers)
        byzantine = position >= t.workers - b.count
        behaviour = b.behaviour if byzantine else HONEST
        params = dict(b.params) if byzantine else {}
        if byzantine and behaviour not in WORKER_BEHAVIOURS:  # attacks need the Byzantine head count
            params["num_byzantine"] = b.count
        specs.append(WorkerSpec(
            index=j, group=group, seed=config.seed, model=config.model.name,
            input_shape=tuple(index.feature_shape), num_classes=index.num_classes,
            model_params=dict(config.model.params), protocol=t.protocol, rule=t.rule, f=t.f,
            rule_params=dict(t.rule_params), pre=tuple(t.pre), lr=t.lr, lr_schedule=t.lr_schedule,
            total_rounds=t.rounds, momentum=t.momentum, weight_decay=t.weight_decay,
            batch_size=t.batch_size, behaviour=behaviour, behaviour_params=params,
            device=config.backend.device,
        ))
        held = _data_source(config, j)
        holder = NO_HOLDER if held is None else holders.index(held)
        deleted = index.ids[(placement.worker == holder) & excluded] if held is not None else index.ids[:0]
        holder_of[j] = holder
        own = source.parts and holder != NO_HOLDER  # cross-silo: the worker's own file is all it reads
        shards[j] = ShardSource(
            source=source.part(holder) if own else source, placement=dataclasses.replace(rule, num_workers=1) if own
            else rule, holder=0 if own else holder, deleted=tuple(sorted(deleted.tolist())),
            store_path=None if state_dir is None else os.path.join(os.fspath(state_dir), "stores", f"worker-{j}"),
            expected_digest=shard_digests.get(str(holder)),
        )
    test = placement.is_test
    train_rows = np.flatnonzero(~test)
    owners = np.asarray(holders, dtype=np.int64)[placement.worker[train_rows]]  # placement index -> worker
    where = np.stack([owners // t.workers, owners, placement.slice[train_rows], placement.worker[train_rows],
                      train_rows], axis=1)
    test_positions = np.flatnonzero(test)
    return RunPlan(config, tuple(specs), shards, index.num_classes, IdIndex(index.ids[train_rows], where), source,
                   index.ids[test_positions], index.labels[test_positions], test_positions, rule, holder_of,
                   expected_test_digest=(digests or {}).get("test"))


def shard_digests(plan: RunPlan) -> dict[str, str]:
    """The digest of every placement position's rows (read here: used when a run did not record them)."""
    seen: dict[str, str] = {}
    index = read_index(plan.source)
    for shard in plan.shards.values():
        if shard.holder != NO_HOLDER and str(shard.holder) not in seen:
            seen[str(shard.holder)] = shard_digest(shard, index)
    return seen


def dataset_digest(dataset: Dataset) -> str:
    """sha256 over a dataset's ids, labels and feature bytes: the source data a state was trained on."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(dataset.ids).tobytes())
    h.update(np.ascontiguousarray(dataset.labels, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(dataset.features, dtype=np.float32).tobytes())
    return h.hexdigest()


SPLITS = ("all", "honest")


def data_holders(config: Config) -> list[int]:
    """The workers the training data is partitioned over, in placement order.

    ``data.split = "all"``: every worker. ``"honest"``: only the honest workers
    (the first ``workers - byzantine.count`` of each group), the setting of the
    MoNNA and bucketing papers, where Byzantine workers own no data.
    """
    split = config.data.split
    if split not in SPLITS:
        raise ConfigError(f"data.split: unknown value {split!r}; choose one of: {', '.join(SPLITS)}")
    m, b = config.training.workers, config.byzantine.count
    return [j for j in range(config.num_workers) if split == "all" or j % m < m - b]


def _data_source(config: Config, j: int) -> int | None:
    """The data holder whose rows worker ``j`` gets: itself; or, when only honest workers hold data,
    for a Byzantine worker that trains (``label_flip``, ``crash``, ``straggler``) a copy of honest
    worker ``j mod honest``'s rows (so the behaviour keeps its strength), and none for an attacker."""
    m, b = config.training.workers, config.byzantine.count
    if config.data.split == "all" or j % m < m - b:
        return j
    if config.byzantine.behaviour not in WORKER_BEHAVIOURS:
        return None
    group, position = divmod(j, m)
    return group * m + position % (m - b)


def ids_digest(ids: Iterable[str]) -> str:
    """sha256 over the sorted ids, newline-separated: names a training set without revealing its rows."""
    h = hashlib.sha256()
    for i in sorted(str(x) for x in ids):
        h.update(i.encode())
        h.update(b"\n")
    return h.hexdigest()
