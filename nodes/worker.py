"""One worker: its shard, its model, its local optimiser, its behaviour.

This is everything that runs inside a single node, whatever executes it (the
in-process backend calls these methods directly, the Ray backend from inside
an actor). Vectors cross worker boundaries as float32 numpy arrays.

MoNNA (Farhadkhani et al., ICML 2023), per honest worker j and round t::

    g_j    = grad loss(theta_j; batch_j) + wd * theta_j
    m_j    = beta * m_j + (1 - beta) * g_j
    half_j = theta_j - lr_t * m_j              # sent to the others
    theta_j = rule(received half-models, pivot=half_j, f)   # nna: mean of the n-f closest

The ``server`` protocol sends ``m_j`` instead and receives the new parameters.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import torch
import torch.nn.functional as F

from ostracon.aggregator import PreStep, aggregate, get_attack, max_f
from ostracon.aggregator.attacks import mimic_direction, mimic_target

from . import approximate
from .messages import Assign, Message, Mix
from .models import build_model, flat_parameters, load_buffers, load_flat_parameters, model_buffers, model_digest
from .seeding import derive_seed, generator
from .shard_store import ShardStore
from .sources import HeldOut, ShardSource, held_out_digest, iter_held_out, rows_digest

HONEST = "honest"
# What a worker's last ``step`` did (the backends report it; the protocol acts on it).
SENT = "sent"
NO_DATA = "no data"  # an honest worker whose shard is empty: sends nothing, still follows its group's mix
NO_ANSWER = "no answer"
# Byzantine behaviours implemented by the worker itself; every other name is an attack from `aggregator`.
WORKER_BEHAVIOURS = ("label_flip", "crash", "straggler")
# Attacks whose worker keeps state across rounds (in get_state): checkpointed and restored like a trainer's.
STATEFUL_ATTACKS = ("mimic_variant",)
# Rules that bound the mixing step by the node's local step: they get the pre-step model as `anchor`.
ANCHORED_RULES = frozenset({"bounded_nna"})
MIMIC_WARMUP = 20  # mimic_variant's default warm-up rounds (10% of the benchmark's 200), then a fixed target
# A model buffer's key in a worker's state (``buffer.bn.running_mean``): kept in its own dtype, never mixed.
BUFFER_PREFIX = "buffer."

# A model's weights as evaluation, digests and serving see them: its flat float32 parameters alone (a model
# without buffers: every built-in), or a mapping with ``"theta"`` and its ``buffer.*`` entries (see
# :func:`model_weights`). Only parameters are exchanged and mixed; buffers stay with the worker that ran them.
Weights = np.ndarray | Mapping[str, np.ndarray]


def model_weights(state: Mapping[str, np.ndarray]) -> Weights:
    """The weights in a worker state (``get_state``, a checkpoint): ``state["theta"]`` itself when the model
    has no buffers (so built-in models travel exactly as before), else ``theta`` and the ``buffer.*`` entries."""
    buffers = {k: v for k, v in state.items() if k.startswith(BUFFER_PREFIX)}
    return {"theta": state["theta"], **buffers} if buffers else state["theta"]


def theta_of(weights: Weights) -> np.ndarray:
    """The flat parameters of ``weights`` (any array-like without buffers is taken as the parameters)."""
    return np.asarray(weights["theta"] if isinstance(weights, Mapping) else weights)


def buffers_of(weights: Weights) -> dict[str, np.ndarray]:
    """The buffers of ``weights`` by buffer name (``{}`` for a bare parameter vector)."""
    if not isinstance(weights, Mapping):
        return {}
    return {k[len(BUFFER_PREFIX):]: np.asarray(v) for k, v in weights.items() if k.startswith(BUFFER_PREFIX)}


def weights_digest(weights: Weights) -> str:
    """sha256 of a model's weights: ``parameter_digest(theta)`` without buffers (every digest recorded before
    buffers existed stays valid), else parameters then buffers (``models.model_digest``)."""
    theta = torch.from_numpy(np.array(theta_of(weights), dtype=np.float32))
    return model_digest(theta, buffers_of(weights))


@dataclass(frozen=True)
class WorkerSpec:
    """Plain, picklable description of one worker (everything needed to rebuild it after a restart)."""

    index: int
    group: int
    seed: int
    model: str
    input_shape: tuple[int, ...]
    num_classes: int
    model_params: Mapping[str, Any] = field(default_factory=dict)
    protocol: str = "monna"
    rule: str = "nna"
    f: int = 0
    rule_params: Mapping[str, Any] = field(default_factory=dict)
    pre: tuple[PreStep, ...] = ()
    lr: float = 0.1
    lr_schedule: str = "constant"
    total_rounds: int = 1
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    behaviour: str = HONEST
    behaviour_params: Mapping[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    @property
    def is_byzantine(self) -> bool:
        return self.behaviour != HONEST

    @property
    def trains(self) -> bool:
        """Whether this worker computes gradients (honest ones and the behaviours that train)."""
        return self.behaviour == HONEST or self.behaviour in WORKER_BEHAVIOURS

    @property
    def keeps_state(self) -> bool:
        """Whether later rounds depend on this worker's state (checkpoints and replays must carry it)."""
        return self.trains or self.behaviour in STATEFUL_ATTACKS

    @property
    def attack(self) -> str | None:
        """The `aggregator` attack this worker sends, if it is that kind of Byzantine worker."""
        return None if self.trains else self.behaviour


def seeded_pre(pre: Iterable[PreStep], seed: int, *parts: object) -> tuple[PreStep, ...]:
    """``pre`` with a generator seeded by ``(seed, *parts)`` given to every randomised step (bucketing),
    so its shuffle is reproducible on every backend and in every replay."""
    out: list[PreStep] = []
    for step in pre:
        name, params = (step, {}) if isinstance(step, str) else (step[0], dict(step[1]))
        if name == "bucketing" and "generator" not in params:
            params["generator"] = generator(seed, *parts, name)
        out.append((name, params) if params else name)
    return tuple(out)


def round_budget(declared_f: int, silent: int) -> int:
    """The fault budget of a round in which ``silent`` workers that should have sent a vector did not.

    ``f`` bounds the faulty workers of a group, whatever their fault. A worker that sends nothing in a
    round (crashed, past the round deadline, still busy with a late step) is visibly faulty in that
    round: it is one of the ``f``. At most ``f - k`` of the vectors that did arrive can then come
    from faulty workers, so the rule and every pre-aggregation use ``max(0, f - k)``. Keeping ``f``
    would discard ``f`` more honest vectors than needed (with 3 of 10 crashed, NNM and NNA would keep
    4 of the 7 honest vectors instead of all 7). An honest worker with no data for the stage
    (``NO_DATA``) is not silent in this sense: it is not faulty and does not count."""
    return max(0, declared_f - silent)


def tolerated_f(rule: str, pre: Iterable[PreStep], n: int, f: int) -> int:
    """The declared ``f``, capped at what ``rule`` accepts for the rows it will see: a round with absent
    workers is smaller, and bucketing shrinks ``n`` rows to ``ceil(n / bucket_size)``."""
    rows = n
    for step in pre:
        name, params = (step, {}) if isinstance(step, str) else step
        if name == "bucketing":
            rows = math.ceil(rows / int(params.get("bucket_size", 2)))
    return min(f, max_f(rule, rows))


def learning_rate(spec: WorkerSpec, t: int) -> float:
    """The step size at round ``t``: ``constant``, ``cosine`` (to 0 at the last round) or ``step``
    (x0.1 at 50% and 75%)."""
    if spec.lr_schedule == "constant":
        return spec.lr
    if spec.lr_schedule == "cosine":
        return 0.5 * spec.lr * (1.0 + math.cos(math.pi * t / max(1, spec.total_rounds)))
    if spec.lr_schedule == "step":
        return spec.lr * (0.1 ** ((t >= spec.total_rounds // 2) + (t >= 3 * spec.total_rounds // 4)))
    raise ValueError(f"unknown lr_schedule {spec.lr_schedule!r}; known: constant, cosine, step")


def spec_model(spec: WorkerSpec) -> torch.nn.Module:
    """The worker's model; every worker of a group starts from the same draw, ``(seed, "init", group)``."""
    return build_model(spec.model, input_shape=tuple(spec.input_shape), num_classes=spec.num_classes,
                       seed=derive_seed(spec.seed, "init", spec.group), **dict(spec.model_params))


def initial_parameters(spec: WorkerSpec) -> torch.Tensor:
    return flat_parameters(spec_model(spec))


class Worker:
    """A node's model and optimiser state over its own :class:`ShardStore`."""

    def __init__(self, spec: WorkerSpec, store: ShardStore, shard: ShardSource | None = None):
        self.spec = spec
        self.store = store
        self.shard = shard  # where its rows (and the held-out rows it evaluates on) come from
        self.device = torch.device(spec.device)
        self.model = spec_model(spec).to(self.device).train()  # buffers (if any) live in the model
        self.theta = flat_parameters(self.model).to(self.device)
        self.momentum = torch.zeros_like(self.theta)
        self.half = self.theta.clone()
        self._data_cache: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self._last_round = -1  # the round whose messages a pending mix holds
        self.mimic_direction: torch.Tensor | None = None  # mimic_variant's attacker state
        self.mimic_target: int | None = None
        self.last_status = SENT
        self._unlearning: _Unlearning | None = None  # set between begin_unlearning and end_unlearning
        # A fresh token per construction: a restarted worker (new process) is told apart from the one it replaced.
        self._incarnation = uuid.uuid4().hex

    def incarnation(self) -> str:
        return self._incarnation

    # ----- state ---------------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        """Parameters and momentum as float32 arrays, and the model's buffers (``buffer.<name>``, each in its
        own dtype): what a checkpoint holds for this worker."""
        state = {"theta": _to_numpy(self.theta), "momentum": _to_numpy(self.momentum)}
        state.update({BUFFER_PREFIX + name: b for name, b in model_buffers(self.model).items()})
        if self.mimic_direction is not None:  # an attacker's warm-up state shapes every later round
            state["mimic_direction"] = _to_numpy(self.mimic_direction)
            state["mimic_target"] = np.array([self.mimic_target], dtype=np.float32)
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        theta = _to_tensor(state["theta"], self.device)
        momentum = _to_tensor(state["momentum"], self.device)
        if theta.shape != self.theta.shape or momentum.shape != self.theta.shape:
            raise ValueError(
                f"worker {self.spec.index}: state has shape {tuple(theta.shape)}/{tuple(momentum.shape)}, "
                f"model needs ({self.theta.numel()},)"
            )
        buffers = {k[len(BUFFER_PREFIX):]: v for k, v in state.items() if k.startswith(BUFFER_PREFIX)}
        try:
            load_buffers(self.model, buffers)
        except ValueError as exc:
            raise ValueError(f"worker {self.spec.index}: state {exc}") from None
        self.theta, self.momentum = theta, momentum
        self.half = theta.clone()
        if "mimic_direction" in state:
            self.mimic_direction = _to_tensor(state["mimic_direction"], self.device)
            self.mimic_target = int(np.asarray(state["mimic_target"]).reshape(-1)[0])
        else:
            self.mimic_direction, self.mimic_target = None, None

    def parameters(self) -> np.ndarray:
        return _to_numpy(self.theta)

    def weights(self) -> Weights:
        """This worker's model as evaluated, digested and served: its parameters, with its buffers if it has
        any (see :data:`Weights`)."""
        return model_weights({"theta": self.parameters(),
                              **{BUFFER_PREFIX + n: b for n, b in model_buffers(self.model).items()}})

    # ----- data ----------------------------------------------------------------------------------
    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete samples from this worker's store (durable before it returns); returns those removed now."""
        removed = self.store.delete(list(ids))
        self._data_cache = None
        return removed

    def reopen_store(self) -> int:
        """Re-read this worker's store from its directory (the coordinator tombstoned or repaired it
        there, holding the state directory's lock); returns the live row count."""
        if self.store.path is not None:
            self.store = ShardStore.open(self.store.path)
            self._data_cache = None
        return len(self.store)

    # ----- evaluation on the held-out split (read here: the rows never travel) ------------------------
    def _held_out(self) -> Iterator[HeldOut]:
        if self.shard is None:
            raise ValueError(f"worker {self.spec.index} was built without a shard source: it cannot read the "
                             "held-out split")
        return iter_held_out(self.shard.source, self.shard.placement)

    def evaluate_held_out(self) -> tuple[float, float]:
        """Accuracy and mean cross-entropy of this worker's model on the held-out split (scalars back)."""
        model = probabilities_model(self.spec, self.weights())
        return evaluate_batches(model, ((h.features, h.labels) for h in self._held_out()))

    def held_out_predictions(self) -> tuple[np.ndarray, np.ndarray]:
        """This worker's model's argmax labels and probabilities on the held-out split (``model_predictions``)."""
        model = probabilities_model(self.spec, self.weights())
        parts = [model_predictions(model, h.features) for h in self._held_out()]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def held_out_digest(self) -> str:
        """``nodes.sources.held_out_digest`` of the split this worker evaluates on."""
        if self.shard is None:
            raise ValueError(f"worker {self.spec.index} was built without a shard source")
        return held_out_digest(self.shard.source, self.shard.placement)

    def rows_digest(self) -> str:
        """``nodes.sources.rows_digest`` of this worker's live rows (computed here: rows never leave the worker)."""
        return rows_digest(self.store.ids, self.store.features, self.store.labels)

    def data_ids(self, max_slice: int) -> list[str]:
        return [str(i) for i in self.store.view(max_slice)[0]]

    def _training_data(self, max_slice: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._data_cache is None or self._data_cache[0] != max_slice:
            _, features, labels = self.store.view(max_slice)
            # Integer features (uint8 images) stay in their dtype on the device; each batch is cast to float32
            # as it enters the model (_model_input): exact, and a quarter of the memory.
            x = torch.from_numpy(np.ascontiguousarray(features)).to(self.device)
            y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).to(self.device)
            if self.spec.behaviour == "label_flip":
                y = self.spec.num_classes - 1 - y
            self._data_cache = (max_slice, x, y)
        return self._data_cache[1], self._data_cache[2]

    # ----- one round -----------------------------------------------------------------------------
    def receive(self, message: Message | None) -> None:
        """Apply what the protocol delivered: a :class:`Mix` of the group's half-models or an :class:`Assign`."""
        if message is None:
            return
        if isinstance(message, Assign):
            self.theta = _to_tensor(message.parameters, self.device)
        elif isinstance(message, Mix):
            payload = message.vectors
            if isinstance(payload, np.ndarray) and payload.ndim == 2:
                vectors = _to_tensor(payload, self.device)  # already stacked: one copy, not n
            else:
                vectors = torch.stack([_to_tensor(v, self.device) for v in payload])
            if not bool(torch.isfinite(self.half).all()):
                # This node's own model diverged (e.g. D-SGD under FOE): it stays non-finite, which
                # evaluation scores 0, instead of a rule refusing the pivot and aborting the run.
                self.theta = self.half
                return
            # Absent workers shrink the round: never declare more than the rule tolerates.
            budget = self.spec.f if message.f is None else message.f
            f = tolerated_f(self.spec.rule, self.spec.pre, vectors.shape[0], budget)
            pre = seeded_pre(self.spec.pre, self.spec.seed, "pre", self.spec.index, self._last_round)
            params = dict(self.spec.rule_params)
            if self.spec.rule in ANCHORED_RULES:
                params["anchor"] = self.theta  # the model before this round's local step
            self.theta = aggregate(vectors, self.spec.rule, f=f, pivot=self.half, pre=pre, **params)
        else:
            raise TypeError(f"unknown message {type(message).__name__}; expected Mix or Assign")
        job = self._unlearning
        if job is not None and job.mask is not None:  # SalUn: weights outside the mask never move
            self.theta = torch.where(job.mask, self.theta, job.frozen)

    def step(self, stage: int, step: int, t: int, incoming: Message | None = None) -> np.ndarray | None:
        """Apply ``incoming``, take one local step on slices ``0..stage``, return the vector to send.

        Returns ``None`` when this worker sends nothing (``last_status`` says why): a crashed worker
        (``NO_ANSWER``), or one whose shard holds no data for this stage (``NO_DATA``): it takes no
        step, and its pivot for the next mix is its current model, so it keeps following its group.
        """
        self.receive(incoming)
        self._last_round = t
        self.last_status = NO_ANSWER
        behaviour = self.spec.behaviour
        if behaviour == "crash" and t >= int(self.spec.behaviour_params.get("round", 0)):
            return None
        if not self.spec.trains:
            return None
        if self._unlearning is not None:
            return self._unlearning_step(step)
        x, y = self._training_data(stage)
        if x.shape[0] == 0:
            self.half = self.theta.clone()
            self.last_status = NO_DATA
            return None
        self.last_status = SENT
        g = generator(self.spec.seed, self.spec.index, stage, step)
        idx = torch.randint(0, x.shape[0], (self.spec.batch_size,), generator=g).to(self.device)
        with self._forward_rng(stage, step):
            grad = self._gradient(x[idx], y[idx])
        beta = self.spec.momentum
        self.momentum = beta * self.momentum + (1.0 - beta) * grad
        self.half = self.theta - learning_rate(self.spec, t) * self.momentum
        out = self.half if self.spec.protocol == "monna" else self.momentum
        if behaviour == "straggler":
            time.sleep(float(self.spec.behaviour_params.get("delay_s", 1.0)))
        return _to_numpy(out)

    @contextlib.contextmanager
    def _forward_rng(self, *parts: object) -> Iterator[None]:
        """A training forward pass draws from the global generator seeded by ``(seed, node, *parts)`` (a user
        model's dropout, say), forked so the caller's RNG state comes back: replays draw the same masks."""
        seed = derive_seed(self.spec.seed, self.spec.index, "forward", *parts)
        if self.device.type != "cuda":
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)  # not torch.manual_seed: ~100x slower per step
                yield
            return
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index]), torch.cuda.device(index):
            torch.default_generator.manual_seed(seed)
            torch.cuda.manual_seed(seed)  # the current device's generator
            yield

    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[None]:
        """The model in ``eval()`` mode: norm layers use their running statistics and leave them unchanged,
        dropout is off. For every forward pass that is not a training step (forget terms, saliency,
        importance, reference outputs): forget rows never reach a buffer."""
        self.model.eval()
        try:
            yield
        finally:
            self.model.train()

    def _gradient(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        load_flat_parameters(self.model, self.theta)
        self.model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(_model_input(x)), y)
        torch.autograd.backward(loss)  # what loss.backward() calls (that method is unannotated)
        grad = _flat_grad(self.model)
        if self.spec.weight_decay:
            grad = grad + self.spec.weight_decay * self.theta
        return grad.detach()

    # ----- approximate unlearning (ostracon.nodes.approximate) -------------------------------------
    def begin_unlearning(self, job: Mapping[str, Any]) -> int:
        """Enter unlearning: ``job`` names the method, its params, this worker's rows to forget, the
        request key (seeds) and the last stage. Returns how many forget rows this worker holds. The
        rows are read from this worker's own store (before they are tombstoned) and never leave it."""
        method = approximate.get_method(job["method"])
        params = method.make(job.get("params"))
        x, y = self._training_data(int(job["stage"]))
        ids = self.store.view(int(job["stage"]))[0]
        forget = torch.from_numpy(np.isin(ids, np.asarray(list(job.get("forget_ids", ())), dtype=str))).to(self.device)
        frozen = self.theta.clone()
        state = _Unlearning(method, params, str(job["key"]), x[forget], y[forget], x[~forget], y[~forget], frozen,
                            self.momentum)
        if method.reference and state.forget_x.shape[0]:
            with torch.no_grad(), self._evaluating():
                load_flat_parameters(self.model, self.theta)
                logits = self.model(_model_input(state.forget_x))
                state.reference_logp = F.log_softmax(logits, 1).gather(1, state.forget_y[:, None]).squeeze(1)
        self.momentum = torch.zeros_like(self.theta)
        self.half = self.theta.clone()
        self._unlearning = state
        return int(state.forget_x.shape[0])

    def forget_term(self, step: int) -> np.ndarray | None:
        """The method's forget-loss gradient on this worker's forget rows at its current model
        (``None``: no forget rows, or the method has no forget term)."""
        job = self._job()
        if job.forget_x.shape[0] == 0:
            return None
        context: dict[str, Any] = {"reference_logp": job.reference_logp}
        if job.method.random_labels:
            g = generator(self.spec.seed, self.spec.index, "unlearn", job.key, "labels", step)
            context["random_labels"] = approximate.random_wrong_labels(job.forget_y, self.spec.num_classes, g)
        grad = self._loss_gradient(
            job.forget_x, lambda logits: job.method.loss(logits, job.forget_y, context, job.params)
        )
        if grad is None:
            return None
        job.rows += int(job.forget_x.shape[0])
        return _to_numpy(grad)

    def forget_saliency(self) -> np.ndarray | None:
        """SalUn's saliency: the cross-entropy gradient on this worker's forget rows (``None``: none held)."""
        job = self._job()
        if job.forget_x.shape[0] == 0:
            return None
        job.rows += int(job.forget_x.shape[0])
        return _to_numpy(self._loss_gradient(job.forget_x, lambda logits: F.cross_entropy(logits, job.forget_y)))

    def set_unlearning_mask(self, mask: np.ndarray) -> None:
        self._job().mask = torch.from_numpy(np.array(mask, dtype=bool)).to(self.device)

    def set_forget_term(self, term: np.ndarray | None) -> None:
        """This round's forget term (computed where the forget rows are), applied by this worker."""
        self._job().shared = None if term is None else _to_tensor(term, self.device)

    def importance(self, which: str) -> np.ndarray | None:
        """SSD's importance, the mean squared batch gradient of the cross-entropy on this worker's
        ``"forget"`` rows (all of them) or ``"retain"`` rows (``retain_batches`` seeded batches)."""
        job = self._job()
        p = job.params
        if which == "forget":
            x, y = job.forget_x, job.forget_y
            batches = [torch.arange(s, min(s + p.batch_size, x.shape[0])) for s in range(0, x.shape[0], p.batch_size)]
        elif which == "retain":
            x, y = job.retain_x, job.retain_y
            g = generator(self.spec.seed, self.spec.index, "unlearn", job.key, "importance")
            batches = [torch.randint(0, x.shape[0], (p.batch_size,), generator=g) for _ in range(p.retain_batches)] \
                if x.shape[0] else []
        else:
            raise ValueError(f"importance of {which!r}: expected 'forget' or 'retain'")
        if not batches:
            return None
        total = torch.zeros_like(self.theta)
        for idx in batches:
            idx = idx.to(self.device)
            total += self._loss_gradient(x[idx], _cross_entropy_on(y, idx)) ** 2
            job.rows += int(idx.numel())
        return _to_numpy(total / len(batches))

    def dampen(self, i_forget: np.ndarray, i_retain: np.ndarray, alpha: float, lam: float) -> None:
        """SSD: scale the parameters by the shared importances (no step, no mix)."""
        self._job()
        self.theta = approximate.dampen(
            self.theta, _to_tensor(i_forget, self.device), _to_tensor(i_retain, self.device), alpha, lam
        )
        self.half = self.theta.clone()

    def end_unlearning(self) -> int:
        """Leave unlearning (the caller delivered the last mix first); the training momentum comes back.
        Returns the gradient evaluations (rows x gradients) this worker spent."""
        job = self._job()
        self.momentum = job.saved_momentum
        self.half = self.theta.clone()
        self._unlearning = None
        return job.rows

    def _job(self) -> _Unlearning:
        if self._unlearning is None:
            raise RuntimeError(f"worker {self.spec.index} is not unlearning (begin_unlearning first)")
        return self._unlearning

    def _unlearning_step(self, step: int) -> np.ndarray | None:
        """One round of the unlearning optimiser (module docstring of ``ostracon.nodes.approximate``)."""
        job = self._job()
        p = job.params
        direction = torch.zeros_like(self.theta)
        active = False
        if p.retain_weight and job.retain_x.shape[0]:
            g = generator(self.spec.seed, self.spec.index, "unlearn", job.key, "batch", step)
            idx = torch.randint(0, job.retain_x.shape[0], (p.batch_size,), generator=g).to(self.device)
            with self._forward_rng("unlearn", job.key, step):
                direction += p.retain_weight * self._gradient(job.retain_x[idx], job.retain_y[idx])
            job.rows += p.batch_size
            active = True
        if job.shared is not None:
            forget = job.shared
            if active:  # bounded by this worker's own retained-data step (module docstring of nodes.approximate)
                norm = torch.linalg.vector_norm(forget)
                bound = torch.linalg.vector_norm(direction)
                if norm > bound:
                    forget = forget * (bound / norm)
            direction += forget
            active = True
        gamma = getattr(p, "gamma", 0.0)
        if gamma:
            direction += gamma * (1.0 - step / p.steps) * torch.sign(self.theta)
            active = True
        if not active:
            self.half = self.theta.clone()
            self.last_status = NO_DATA  # nothing to do: follows its group's mix
            return None
        if job.mask is not None:
            direction = torch.where(job.mask, direction, torch.zeros_like(direction))
        self.momentum = p.momentum * self.momentum + direction
        self.half = self.theta - p.lr * self.momentum
        self.last_status = SENT
        return _to_numpy(self.half if self.spec.protocol == "monna" else self.momentum)

    @overload
    def _loss_gradient(
        self, x: torch.Tensor, loss_of_logits: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor: ...

    @overload
    def _loss_gradient(
        self, x: torch.Tensor, loss_of_logits: Callable[[torch.Tensor], torch.Tensor | None]
    ) -> torch.Tensor | None: ...

    def _loss_gradient(
        self, x: torch.Tensor, loss_of_logits: Callable[[torch.Tensor], torch.Tensor | None]
    ) -> torch.Tensor | None:
        """The gradient of ``loss_of_logits(model(x))`` at ``theta`` (``None`` where the loss is ``None``), in
        ``eval()`` mode (``_evaluating``)."""
        load_flat_parameters(self.model, self.theta)
        self.model.zero_grad(set_to_none=True)
        with self._evaluating():
            loss = loss_of_logits(self.model(_model_input(x)))
        if loss is None:
            return None
        torch.autograd.backward(loss)  # what loss.backward() calls (that method is unannotated)
        return _flat_grad(self.model).detach()

    def attack(self, honest: Sequence[np.ndarray], t: int, budget: int | None = None) -> np.ndarray | None:
        """The vector an omniscient attacker sends this round, given the honest vectors; ``budget`` is
        the fault budget the round's rule will use (silent workers spent part of it; None: declared)."""
        name = self.spec.attack
        if name is None or len(honest) == 0:
            return None
        vectors = torch.stack([_to_tensor(v, self.device) for v in honest])
        params = dict(self.spec.behaviour_params)
        num_byzantine = int(params.pop("num_byzantine", 1))
        if name == "mimic_variant":
            params.update(self._mimic_state(vectors, t, int(params.get("warmup", MIMIC_WARMUP))))
        vector = get_attack(name)(
            vectors,
            f=self.spec.f,
            num_byzantine=num_byzantine,
            defense=self._defense(vectors, self.spec.f if budget is None else budget)
            if name.endswith("_optimized") else None,
            generator=generator(self.spec.seed, self.spec.index, "attack", t),
            **params,
        )
        return _to_numpy(vector)

    def _mimic_state(self, honest: torch.Tensor, t: int, warmup: int) -> dict[str, int]:
        """Mimic's warm-up (bucketing paper): refine the top direction and follow its farthest honest
        worker for rounds ``t < warmup``, then keep copying the last one. The state lives in
        ``get_state`` so a replay from a checkpoint attacks exactly as the first run did."""
        if t >= warmup and self.mimic_target is not None:
            return {"target": min(self.mimic_target, honest.shape[0] - 1)}
        if self.mimic_direction is None:  # the same draw for every attacker: they agree on the target
            g = generator(self.spec.seed, "mimic", "direction")
            self.mimic_direction = torch.randn(honest.shape[1], generator=g).to(self.device)
        self.mimic_direction = mimic_direction(honest, self.mimic_direction, min(t, warmup))
        self.mimic_target = mimic_target(honest, self.mimic_direction)
        return {"target": self.mimic_target}

    def _defense(self, honest: torch.Tensor, budget: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The aggregation the attacker faces (with the round's fault ``budget``), as a closure over all
        sent vectors."""
        spec = self.spec
        if spec.protocol == "monna":
            # Decentralised: each honest worker mixes around its own vector; hurt them on average.
            # A diverged honest node keeps its non-finite model instead of mixing (`receive`): no pivot.
            pivots = [p for p in honest if bool(torch.isfinite(p).all())]

            def defense(vectors: torch.Tensor) -> torch.Tensor:
                # Like `receive`: a round with absent workers is smaller, so cap f at what the rule accepts.
                f = tolerated_f(spec.rule, spec.pre, vectors.shape[0], budget)
                if not pivots:  # every honest node diverged: nothing left to hurt
                    return vectors.mean(0)
                outs = [
                    aggregate(vectors, spec.rule, f=f, pivot=p, pre=spec.pre, **dict(spec.rule_params))
                    for p in pivots
                ]
                return torch.stack(outs).mean(0)
        else:
            def defense(vectors: torch.Tensor) -> torch.Tensor:
                f = tolerated_f(spec.rule, spec.pre, vectors.shape[0], budget)
                return aggregate(vectors, spec.rule, f=f, pre=spec.pre, **dict(spec.rule_params))
        return defense


@dataclass
class _Unlearning:
    """A worker's state while it unlearns (see ``begin_unlearning``)."""

    method: approximate.Method
    params: Any
    key: str
    forget_x: torch.Tensor
    forget_y: torch.Tensor
    retain_x: torch.Tensor
    retain_y: torch.Tensor
    frozen: torch.Tensor  # the model before unlearning (SalUn keeps it outside the mask)
    saved_momentum: torch.Tensor  # the training momentum, back after unlearning
    mask: torch.Tensor | None = None
    shared: torch.Tensor | None = None
    reference_logp: torch.Tensor | None = None
    rows: int = 0  # gradient evaluations spent


def evaluate(spec: WorkerSpec, theta: Weights, features: np.ndarray, labels: np.ndarray,
             batch_size: int = 4096) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of the model with weights ``theta`` on ``(features, labels)``."""
    return evaluate_model(probabilities_model(spec, theta), features, labels, batch_size)


def probabilities_model(spec: WorkerSpec, theta: Weights) -> torch.nn.Module:
    """The model with weights ``theta`` (parameters, and buffers when it has them) in ``eval()`` mode: norm
    layers use the running statistics of the worker the weights came from."""
    model = spec_model(spec)
    load_flat_parameters(model, _to_tensor(theta_of(theta), torch.device("cpu")))
    load_buffers(model, buffers_of(theta))
    model.eval()
    return model


def model_predictions(model: torch.nn.Module, features: np.ndarray,
                      batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """``(argmax labels int64 (n,), softmax probabilities float32 (n, C))`` of ``model`` on ``features``:
    what one model contributes to an ensemble's vote (``cluster.execution.ensemble.combine``)."""
    labels, probabilities = [], []
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(features[start:start + batch_size], dtype=np.float32))
            logits = model(x)
            labels.append(logits.argmax(1))
            probabilities.append(torch.softmax(logits, 1).to(torch.float32))
    if not labels:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return torch.cat(labels).numpy().astype(np.int64), torch.cat(probabilities).numpy()


def evaluate_model(model: torch.nn.Module, features: np.ndarray, labels: np.ndarray,
                   batch_size: int = 4096) -> tuple[float, float]:
    return evaluate_batches(model, [(features, labels)], batch_size)


def evaluate_batches(model: torch.nn.Module, chunks: Iterable[tuple[np.ndarray, np.ndarray]],
                     batch_size: int = 4096) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` over ``(features, labels)`` chunks read one at a time
    (chunks whose sizes are multiples of ``batch_size`` give the sums of one array, bit for bit)."""
    correct, loss_sum, count = 0, 0.0, 0
    with torch.no_grad():
        for features, labels in chunks:
            count += len(labels)
            for start in range(0, len(labels), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(features[start:start + batch_size], dtype=np.float32))
                y = torch.from_numpy(np.ascontiguousarray(labels[start:start + batch_size], dtype=np.int64))
                logits = model(x)
                if not torch.isfinite(logits).all():
                    return 0.0, float("inf")
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
    if count == 0:
        return float("nan"), float("nan")
    return correct / count, loss_sum / count


def _cross_entropy_on(labels: torch.Tensor, idx: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``logits -> cross_entropy(logits, labels[idx])`` (binds ``idx`` now: callers build it in a loop)."""
    return lambda logits: F.cross_entropy(logits, labels[idx])


def _flat_grad(model: torch.nn.Module) -> torch.Tensor:
    """Every parameter's gradient, in ``parameters()`` order, as one ``(d,)`` vector (after a backward pass)."""
    grads = []
    for p in model.parameters():
        if p.grad is None:  # every parameter takes part in every loss: backward() filled them all
            raise RuntimeError("a model parameter has no gradient after backward()")
        grads.append(p.grad.reshape(-1))
    return torch.cat(grads)


def _model_input(x: torch.Tensor) -> torch.Tensor:
    """A batch as the model takes it: float32 (integer features are stored as they came)."""
    return x if x.dtype == torch.float32 else x.to(torch.float32)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def _to_tensor(v: Any, device: torch.device) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.to(device=device, dtype=torch.float32)
    # np.array copies: vectors read zero-copy from Ray's object store are read-only.
    return torch.from_numpy(np.array(v, dtype=np.float32)).to(device)
