"""``ostracon demo``: the whole story in one command.

Train on scikit-learn's digits (2 isolated groups of 4 MoNNA workers, one
Byzantine worker per group, 4 SISA slices), delete 5 samples exactly, then
audit the deletion by retraining from scratch and comparing digests.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from .config import load
from .training import train
from .unlearning import format_certificate, locate, unlearn_state_dir, verify_state_dir
from .plan import make_plan


def run_demo(outdir: str | None = None, backend: str = "local") -> int:
    chosen_by_user = outdir is not None
    outdir = outdir or tempfile.mkdtemp(prefix="ostracon-demo-")
    state_dir = os.path.join(outdir, "run")
    # Shipped inside the package (not examples/), so the demo runs from any install.
    config = load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.toml"), {"backend.name": backend})
    print(f"1/3 training: {config.unlearning.groups} groups x {config.training.workers} workers "
          f"({config.byzantine.count} Byzantine '{config.byzantine.behaviour}' per group), "
          f"{config.unlearning.slices} slices, backend {backend} -> {state_dir}")
    result = train(config, state_dir)
    acc = result.summary["honest_test_accuracy"]
    print(f"    honest test accuracy min {acc['min']:.3f} mean {acc['mean']:.3f}; "
          f"ensemble {result.summary['ensemble_test_accuracy']:.3f}")
    ids = sorted(locate(make_plan(config)))
    chosen = [ids[i] for i in np.random.default_rng(0).choice(len(ids), size=5, replace=False)]
    print(f"2/3 exact deletion of ids {', '.join(chosen)}")
    cert = unlearn_state_dir(state_dir, chosen, overrides={"backend.name": backend})
    print(format_certificate(cert))
    print("3/3 audit: retraining from scratch without the deleted ids and comparing parameter digests")
    report = verify_state_dir(state_dir, overrides={"backend.name": backend})
    for g, row in sorted(report["groups"].items()):
        print(f"    group {g}: {'MATCH' if row['match'] else 'MISMATCH'} {row['recomputed'][:16]}")
    print("demo OK: the deletion is exact" if report["ok"] else "demo FAILED: digests differ")
    if not chosen_by_user:
        print(f"kept the run in {outdir} (state, checkpoints, certificate); delete it when done, or pass -o DIR")
    return 0 if report["ok"] else 1
