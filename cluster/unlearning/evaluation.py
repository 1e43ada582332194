"""Evaluation of approximate unlearning against exact unlearning (retraining without the forget set).

The metrics and their protocol follow SalUn (Fan et al., "SalUn: Empowering Machine Unlearning via
Gradient-based Weight Saliency", ICLR 2024) and l1-sparse unlearning (Jia et al., "Model Sparsity Can
Simplify Machine Unlearning", NeurIPS 2023; code: OPTML-Group/Unlearn-Sparse, ``evaluation/SVC_MIA.py``):

- ``UA`` (unlearning accuracy): error on the forget set, ``1 - acc(D_f)``
- ``RA`` (remaining accuracy): accuracy on the retained training data ``D_r``
- ``TA`` (testing accuracy): accuracy on held-out data
- ``MIA`` (MIA-efficacy): the fraction of the forget set a confidence-based membership-inference
  attack calls a NON-member
- ``Avg. Gap``: the mean absolute difference of these four, in percentage points, between the
  approximately unlearned model and the exactly unlearned one (retrained without ``D_f``)

A model is a :class:`~ostracon.nodes.worker.WorkerSpec` and a flat float32 parameter vector
``theta``; data are numpy arrays. Every function is pure and deterministic: each random choice is
drawn from a ``numpy.random.Generator`` seeded by the ``seed`` argument. All rates are fractions in
``[0, 1]``, except :func:`gaps` (percentage points, as the papers' tables).

Non-finite models. A sample whose logits are not all finite (a diverged model, a ``theta`` holding
NaN or inf) gets a row of NaN from :func:`probabilities`. :func:`accuracy` counts such a row as a wrong
prediction (as :func:`~ostracon.nodes.worker.evaluate_model` scores a diverged model 0), so
``UA``/``RA``/``TA`` stay defined (``UA = 1``, ``RA = TA = 0`` for a wholly non-finite model). Every
metric that needs the probability values themselves (``MIA``, the mean confidences, KL) is NaN.
:func:`unlearning_metrics` reports ``finite=False``; a gate must check that flag (NaN also fails every
``<=`` comparison, so ``avg_gap <= tolerance`` is False for such a model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import torch

from ostracon.nodes.worker import Weights, WorkerSpec, probabilities_model, theta_of

from ..vocabulary import DeletionMode

__all__ = ["METRIC_KEYS", "GAP_KEYS", "probabilities", "true_class_confidence", "accuracy", "mia_efficacy",
           "unlearning_metrics", "gaps", "kl_divergence", "compare_to_exact"]

# The keys of unlearning_metrics' result, and the metrics the Avg. Gap is taken over.
METRIC_KEYS = ("UA", "RA", "TA", "MIA", "forget_confidence", "test_confidence", "finite")
GAP_KEYS = ("UA", "RA", "TA", "MIA")
BATCH_SIZE = 4096
KL_EPS = 1e-12
# Attack model of SVC_MIA (Unlearn-Sparse / SalUn).
SVC_PARAMS = {"C": 3, "gamma": "auto", "kernel": "rbf"}

Split: TypeAlias = tuple[np.ndarray, np.ndarray]  # (features (n, *input_shape), labels int (n,))


# --------------------------------------------------------------------- model outputs


def probabilities(spec: WorkerSpec, theta: Weights, features: np.ndarray,
                  batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Softmax outputs ``p[i, c] = exp(z_ic) / sum_k exp(z_ik)`` of the model ``(spec, theta)``; ``(n, C)`` float64.

    ``z`` are the model's logits on ``features`` (shape ``(n, *spec.input_shape)``), computed in eval mode
    under ``torch.no_grad`` in batches of ``batch_size``; the softmax is taken in float64. A row whose
    logits are not all finite is returned as NaN (see the module docstring)."""
    return _probabilities(probabilities_model(spec, theta), features, spec.num_classes, batch_size)


def _probabilities(model: torch.nn.Module, features: np.ndarray, num_classes: int,
                   batch_size: int = BATCH_SIZE) -> np.ndarray:
    n = len(features)
    out = np.empty((n, num_classes), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            x = torch.from_numpy(np.ascontiguousarray(features[start:start + batch_size], dtype=np.float32))
            logits = model(x).to(torch.float64)
            probs = torch.softmax(logits, dim=1)
            bad = ~torch.isfinite(logits).all(dim=1)
            probs[bad] = float("nan")
            out[start:start + len(x)] = probs.numpy()
    return out


def true_class_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The probability each row gives its true class, ``conf_i = p[i, y_i]``; ``(n,)`` float64.

    The membership feature of ``SVC_MIA`` (Unlearn-Sparse: ``torch.gather(prob, 1, labels[:, None])``).
    NaN for a non-finite row."""
    probs, labels = _check_probs_labels(probs, labels)
    conf: np.ndarray = probs[np.arange(len(labels)), labels].astype(np.float64)
    return conf


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy ``mean_i [argmax_c p[i, c] == y_i]``; NaN for no rows.

    A row that is not all finite counts as a wrong prediction (ties go to the smallest class index)."""
    probs, labels = _check_probs_labels(probs, labels)
    if len(labels) == 0:
        return float("nan")
    finite = np.isfinite(probs).all(axis=1)
    correct = finite & (np.argmax(np.where(np.isfinite(probs), probs, -np.inf), axis=1) == labels)
    return float(correct.mean())


def _check_probs_labels(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.ndim != 1 or len(probs) != len(labels):
        raise ValueError(f"expected probs (n, C) and labels (n,), got {probs.shape} and {labels.shape}")
    if labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must be integers in [0, {probs.shape[1]})")
    return probs, labels.astype(np.int64, copy=False)


# --------------------------------------------------------------------- membership inference


def mia_efficacy(conf_retain: np.ndarray, conf_test: np.ndarray, conf_forget: np.ndarray, *, seed: int = 0,
                 max_per_class: int = 2000) -> float:
    """MIA-efficacy of Jia et al. 2023 / SalUn: the fraction of the forget set predicted NON-member.

    Attack (``SVC_MIA`` of OPTML-Group/Unlearn-Sparse): an ``sklearn.svm.SVC(C=3, gamma="auto",
    kernel="rbf")`` fitted on the true-class confidence as its single feature, retained samples labelled
    1 (members), test samples labelled 0 (non-members). The two classes are balanced by drawing, without
    replacement, ``m = min(len(conf_retain), len(conf_test), max_per_class)`` of each with
    ``numpy.random.default_rng(seed)`` (the reference subsamples the retain set to the test set's size).
    Then ``efficacy = 1 - mean(svc.predict(conf_forget))``: 0 when every forget sample looks like
    training data (nothing forgotten), 1 when all look unseen.

    NaN when the forget set is empty (nothing to attack), when the retain or the test set is empty
    (one class only: no attack can be fitted), or when any confidence is non-finite (a diverged model)."""
    conf_retain, conf_test, conf_forget = (np.asarray(c, dtype=np.float64).reshape(-1)
                                           for c in (conf_retain, conf_test, conf_forget))
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    if len(conf_forget) == 0 or len(conf_retain) == 0 or len(conf_test) == 0:
        return float("nan")
    if not all(np.isfinite(c).all() for c in (conf_retain, conf_test, conf_forget)):
        return float("nan")
    from sklearn.svm import SVC  # deferred: importing scikit-learn costs a second

    rng = np.random.default_rng(seed)
    m = min(len(conf_retain), len(conf_test), int(max_per_class))
    members = conf_retain[np.sort(rng.choice(len(conf_retain), m, replace=False))]
    non_members = conf_test[np.sort(rng.choice(len(conf_test), m, replace=False))]
    x = np.concatenate([members, non_members]).reshape(-1, 1)
    y = np.concatenate([np.ones(m, dtype=np.int64), np.zeros(m, dtype=np.int64)])
    clf = SVC(**SVC_PARAMS)
    clf.fit(x, y)
    return float(1.0 - clf.predict(conf_forget.reshape(-1, 1)).mean())


# --------------------------------------------------------------------- one model's metrics


def unlearning_metrics(spec: WorkerSpec, theta: Weights, forget: Split, retain: Split, test: Split, *,
                       seed: int = 0, max_retain: int = 5000, max_per_class: int = 2000,
                       batch_size: int = BATCH_SIZE) -> dict[str, Any]:
    """``UA``, ``RA``, ``TA``, ``MIA`` and mean confidences of one model (Jia et al. 2023, SalUn, Sec. 5).

    ``forget``, ``retain``, ``test`` are ``(features, labels)`` pairs. Returns floats in ``[0, 1]``
    (NaN where undefined) and a bool:

    - ``UA = 1 - acc(forget)`` (NaN for an empty forget set)
    - ``RA = acc(retain')``, ``TA = acc(test)``
    - ``MIA = mia_efficacy(conf(retain'), conf(test), conf(forget), seed=seed)``
    - ``forget_confidence``, ``test_confidence``: mean ``p[i, y_i]`` on the forget and test sets
    - ``finite``: whether ``theta`` and every output evaluated are finite

    ``retain'`` is the retain set itself, or ``max_retain`` of its rows drawn without replacement with
    ``numpy.random.default_rng(seed)`` when it is larger. Non-finite models: see the module docstring."""
    model = probabilities_model(spec, theta)
    outputs = _evaluate(model, spec.num_classes, forget, retain, test, seed, max_retain, batch_size)
    return _metrics(*outputs, finite_theta=bool(np.isfinite(theta_of(theta)).all()), seed=seed,
                    max_per_class=max_per_class)


def _evaluate(model: torch.nn.Module, num_classes: int, forget: Split, retain: Split, test: Split, seed: int,
              max_retain: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(probs, labels)]`` for the forget set, the retain subsample and the test set."""
    if max_retain < 1:
        raise ValueError(f"max_retain must be >= 1, got {max_retain}")
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for name, split in (("forget", forget), ("retain", retain), ("test", test)):
        features, labels = split
        labels = np.asarray(labels)
        if len(features) != len(labels):
            raise ValueError(f"{name}: {len(features)} feature rows but {len(labels)} labels")
        if name == "retain" and len(labels) > max_retain:
            rows = np.sort(np.random.default_rng(seed).choice(len(labels), max_retain, replace=False))
            features, labels = features[rows], labels[rows]
        out.append((_probabilities(model, features, num_classes, batch_size), labels))
    return out


def _metrics(forget: tuple[np.ndarray, np.ndarray], retain: tuple[np.ndarray, np.ndarray],
             test: tuple[np.ndarray, np.ndarray], *, finite_theta: bool, seed: int,
             max_per_class: int) -> dict[str, Any]:
    (pf, yf), (pr, yr), (pt, yt) = forget, retain, test
    conf_f, conf_r, conf_t = true_class_confidence(pf, yf), true_class_confidence(pr, yr), true_class_confidence(pt, yt)
    finite = finite_theta and all(np.isfinite(p).all() for p in (pf, pr, pt))
    return {
        "UA": 1.0 - accuracy(pf, yf),
        "RA": accuracy(pr, yr),
        "TA": accuracy(pt, yt),
        "MIA": mia_efficacy(conf_r, conf_t, conf_f, seed=seed, max_per_class=max_per_class),
        "forget_confidence": _mean(conf_f),
        "test_confidence": _mean(conf_t),
        "finite": bool(finite),
    }


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else float("nan")


# --------------------------------------------------------------------- against the exact model


def gaps(approx: Mapping[str, float], exact: Mapping[str, float], keys: Sequence[str] = GAP_KEYS) -> dict[str, float]:
    """Per-metric gaps ``100 * |approx[k] - exact[k]|`` (percentage points) and ``avg_gap``, their mean.

    ``avg_gap`` is the "Avg. Gap" of SalUn's tables (over UA, RA, TA and MIA-efficacy, the exactly
    unlearned model, "Retrain", as reference). A NaN metric gives a NaN gap and a NaN ``avg_gap``."""
    keys = tuple(keys)
    if not keys:
        raise ValueError("keys must name at least one metric")
    missing = [k for k in keys if k not in approx or k not in exact]
    if missing:
        raise KeyError(f"metric(s) missing from approx or exact: {', '.join(missing)}")
    out = {k: 100.0 * abs(float(approx[k]) - float(exact[k])) for k in keys}
    out["avg_gap"] = float(np.mean([out[k] for k in keys]))
    return out


def kl_divergence(p_ref: np.ndarray, p: np.ndarray) -> float:
    """Mean over rows of ``KL(p_ref || p) = sum_c p_ref[c] * (log p_ref[c] - log p[c])``; NaN for no rows.

    ``p_ref`` is the reference (the exactly unlearned model's outputs), ``p`` the model compared with it.
    Both are clipped to ``[1e-12, 1]`` inside the logarithms (a class ``p`` deems impossible costs at most
    ``log 1e12`` per unit of reference mass); a row's value is floored at 0 (clipping and rounding can
    otherwise leave ``-1e-17``). NaN if any probability is non-finite."""
    p_ref = np.asarray(p_ref, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if p_ref.shape != p.shape or p.ndim != 2:
        raise ValueError(f"expected two (n, C) arrays of the same shape, got {p_ref.shape} and {p.shape}")
    if len(p) == 0 or not (np.isfinite(p_ref).all() and np.isfinite(p).all()):
        return float("nan")
    ref = np.clip(p_ref, KL_EPS, 1.0)
    rows = np.sum(p_ref * (np.log(ref) - np.log(np.clip(p, KL_EPS, 1.0))), axis=1)
    return float(np.maximum(rows, 0.0).mean())


def compare_to_exact(spec: WorkerSpec, theta_approx: Weights, theta_exact: Weights, forget: Split,
                     retain: Split, test: Split, *, seed: int = 0, max_retain: int = 5000,
                     max_per_class: int = 2000, batch_size: int = BATCH_SIZE) -> dict[str, Any]:
    """An approximately unlearned model against the exactly unlearned one (retrained without ``forget``).

    Returns ``{"approx": metrics, "exact": metrics, "gaps": {UA, RA, TA, MIA, avg_gap}, "avg_gap",
    "kl_forget", "kl_test"}``: both models' :func:`unlearning_metrics` (same retain subsample, same attack
    seed), their :func:`gaps` in percentage points, and ``kl_* = kl_divergence(p_exact, p_approx)`` on the
    forget and the test set (SalUn compares output distributions to Retrain's the same way)."""
    results = {}
    probs = {}
    for name, theta in (("approx", theta_approx), (DeletionMode.EXACT.value, theta_exact)):
        model = probabilities_model(spec, theta)
        outputs = _evaluate(model, spec.num_classes, forget, retain, test, seed, max_retain, batch_size)
        results[name] = _metrics(*outputs, finite_theta=bool(np.isfinite(theta_of(theta)).all()), seed=seed,
                                 max_per_class=max_per_class)
        probs[name] = outputs
    g = gaps(results["approx"], results["exact"])
    return {
        "approx": results["approx"],
        "exact": results["exact"],
        "gaps": g,
        "avg_gap": g["avg_gap"],
        "kl_forget": kl_divergence(probs["exact"][0][0], probs["approx"][0][0]),
        "kl_test": kl_divergence(probs["exact"][2][0], probs["approx"][2][0]),
    }
