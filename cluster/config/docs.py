"""What each config key means: dotted key -> one line of markdown.

The README's configuration table is generated from these and the schema in :mod:`.schema`
(``python -m ostracon.cluster.config_reference --write README.md``). A key missing here may carry its
meaning in its dataclass field instead, ``field(..., metadata={"doc": "..."})``; a key with neither is an
error, and so is an entry here for a key the schema does not have (``tests/test_config_reference.py``).
Keep each meaning one line of markdown; a ``|`` is escaped when the table is rendered.
"""

from __future__ import annotations

DOCS: dict[str, str] = {
    # ----- top level
    "seed": "every random draw derives from it: batch indices from `(seed, worker, stage, step)`, initial models "
            "from `(seed, group)`",
    "deterministic": "pin threads and deterministic kernels: same config + seed => bit-identical parameters on "
                     "either backend",
    "threads": "torch threads per worker (and in the driver)",
    # ----- [data]
    "data.source": "`digits`, `synthetic`, `mnist`, `fashion_mnist`, `cifar10` (read from `data.path` in "
                   "torchvision's on-disk layout, never downloaded), `npz` (`X`, `y`, optional `ids`), `parquet` "
                   "(columns `id`, `label`, `features`: see [Parquet data](#parquet-data))",
    "data.path": "npz file, dataset root for the image sets, or parquet file / directory / `s3://bucket/prefix` "
                 "URI; a relative path is taken from the working directory "
                 "and stored absolute in `config.json` (so `unlearn`/`verify` work from anywhere)",
    "data.test_fraction": "held-out test split, chosen by a hash of each sample's id; `0`: no test split, accuracy is "
                          "not measured (`null` in `summary.json`, with a `note`)",
    "data.partition": "`iid`, `dirichlet` (per-class Dirichlet(`alpha`) proportions), `by_class` "
                      "(`classes_per_worker` classes each)",
    "data.alpha": "partition parameter: the Dirichlet concentration of `dirichlet`",
    "data.classes_per_worker": "partition parameter: the classes each worker holds with `by_class`",
    "data.samples": "size of the `synthetic` Gaussian mixture: samples",
    "data.features": "size of the `synthetic` Gaussian mixture: features",
    "data.classes": "size of the `synthetic` Gaussian mixture: classes",
    "data.split": "`all`: the training data is partitioned over every worker; `honest`: over the honest workers only "
                  "(Byzantine attackers hold none, a `label_flip`/`crash` worker copies an honest worker's rows), "
                  "the papers' benchmark setting",
    "data.per_worker": "cross-silo: each data-holding worker's own file, a path or URI with `{worker}` (its global "
                       "index), e.g. `s3://silo/worker-{worker}.parquet`; a worker reads only its file, its rows are "
                       "its own (slices and the held-out rows by hash inside it); parquet or npz; excludes "
                       "`data.path`",
    "data.shape": "parquet: each row's `features` reshaped to this, e.g. `[3, 32, 32]` (`[]`: a flat vector)",
    # ----- [model]
    "model.name": "a built-in, `logreg`, `mlp`, `cnn`, `resnet18` (GroupNorm), or your own "
                  "`\"package.module:function\"`: called as "
                  "`function(input_shape=..., num_classes=..., **model.params)`, it returns a `torch.nn.Module`; "
                  "imported by the driver and on every worker (see [Bring your own model](#bring-your-own-model))",
    "model.params": "keyword arguments of the builder, e.g. `{ hidden = 64, layers = 1 }` for `mlp`",
    # ----- [training]
    "training.protocol": "`monna` (decentralised: every worker mixes the half-models it received around its own) or "
                         "`server` (parameter server aggregates the workers' momenta)",
    "training.rule": "any rule of `aggregator` (`nna` is MoNNA's; `bounded_nna` caps each mixing step at "
                     "`rule_params.c` (default 1) times the node's own local step; `mean` with `server` is plain "
                     "D-SGD)",
    "training.rule_params": "rule parameters",
    "training.pre": "pre-aggregations applied in order before the rule, e.g. `[]`, `[\"nnm\"]` or "
                    "`[{ name = \"bucketing\", bucket_size = 2 }]`. The default, nearest-neighbour mixing before "
                    "MoNNA's NNA, has the best measured worst case "
                    "([Robustness](#robustness-nnm-before-nna-is-the-default)); `[]` is MoNNA as in its paper",
    "training.workers": "workers **per group**",
    "training.f": "declared number of faulty workers the rule tolerates, per group (`f < workers/2`); a round in "
                  "which `k` workers sent nothing (crashed, late, busy) runs with `max(0, f - k)`",
    "training.rounds": "total rounds (split evenly over the SISA stages)",
    "training.batch_size": "samples per local step",
    "training.lr": "learning rate of the local step, scaled over the rounds by `training.lr_schedule`",
    "training.lr_schedule": "`constant`, `cosine`, `step` (x0.1 at 50 % and 75 %)",
    "training.momentum": "Polyak momentum `beta` (MoNNA's paper uses 0.99)",
    "training.weight_decay": "L2 added to the gradient",
    "training.eval_every": "rounds between evaluations (one `metrics.jsonl` line each)",
    "training.round_deadline_s": "a worker that has not answered after this many seconds is absent from the round "
                                 "(0: wait); each such event is recorded in the state's schedule, and replays and "
                                 "`verify` impose the recorded events instead of timing",
    "training.precision": "`fp32`, the only precision accepted: exact unlearning needs fp32 (a deletion is certified "
                          "bit-identical to a retrain), so `bf16` is refused",
    # ----- [byzantine]
    "byzantine.count": "actual Byzantine workers per group (the last ones of each group); may differ from "
                       "`training.f`",
    "byzantine.behaviour": "any attack of `aggregator` (`sign_flip`, `alie`, `alie_optimized` (`sign` = -1 default, "
                           "+1, 0), `foe`, `foe_optimized`, `mimic` (`target`), `mimic_variant` (`warmup`), "
                           "`gaussian`, `inf`, `nan`), or `label_flip` (trains on labels `C-1-y`), `crash` (stops "
                           "answering at `params.round`), `straggler` (answers `params.delay_s` late)",
    "byzantine.params": "the behaviour's parameters, e.g. `{ tau = 1.5 }` for `alie`",
    # ----- [unlearning]
    "unlearning.groups": "isolated SISA groups (shards); each trains its own model, groups never exchange parameters",
    "unlearning.slices": "slices per worker; stage `r` trains on slices `0..r` and ends with a checkpoint",
    "unlearning.vote": "ensemble prediction over group models: `majority` (ties to the smallest class) or "
                       "`mean_proba`",
    "unlearning.method": "the approximate-unlearning method of `--mode approximate` / `approximate_then_exact` when "
                         "a request names none: `ft`, `ga`, `npo`, `rl`, `l1_sparse`, `salun`, `ssd`",
    "unlearning.gate.max_test_drop": "gate: an approximate update whose test accuracy drops by more than this "
                                     "(fraction) on any honest model of a group it changed is rolled back and the "
                                     "request is carried out exactly",
    "unlearning.gate.max_retain_drop": "gate: the same for the accuracy on the group's retained data",
    "unlearning.gate.max_forget_gap": "gate: forget-set accuracy may exceed test accuracy by at most this, plus two "
                                      "binomial standard deviations for the forget-set size (a few correctly "
                                      "classified samples prove nothing)",
    # ----- [backend]
    "backend.name": "`local` (all workers in this process, the reference) or `ray` (one actor per worker)",
    "backend.address": "join an existing Ray cluster; empty: reuse the connected one or start a local one",
    "backend.num_cpus": "per worker actor; `0` shares the cluster's CPUs evenly (at most 1 each)",
    "backend.num_gpus": "GPUs per worker actor on `ray`, a fraction below 1 (e.g. `0.25`: four actors share one GPU) "
                        "or a whole number; needs `backend.device = \"cuda\"`, which on `ray` needs it `> 0`; "
                        "ignored by `local`",
    "backend.placement": "`spread` or `pack`: a placement group with that strategy, one bundle per worker",
    "backend.max_restarts": "Ray restarts a dead worker actor, and its group's stage is redone from the stage's start "
                            "(at most `max_restarts + 1` attempts, then the command fails and nothing is published)",
    "backend.device": "`cpu` or `cuda[:N]` for the workers' tensors; on `ray` each actor sees only the "
                      "`backend.num_gpus` it reserved (use `cuda`), on `local` the machine's GPUs must exist. "
                      "Deterministic mode sets `CUBLAS_WORKSPACE_CONFIG=:4096:8` (in the actors' `runtime_env` on "
                      "`ray`); digests on a GPU are reproducible on the same kind of GPU, not equal to the CPU's",
    "backend.start_timeout_s": "how long to wait for the cluster at `backend.address` to answer, for the placement "
                               "group and for the actors to be placed, before failing with the address or the "
                               "resources asked",
}


# The approximate methods' hyperparameters: one row per method and parameter (defaults differ per method).
_METHOD_PARAMS = {
    "steps": "unlearning rounds",
    "lr": "step size of the unlearning optimiser",
    "momentum": "heavy-ball momentum of the unlearning optimiser (starts at 0; the training momentum is kept)",
    "batch_size": "retained rows per trainer per round (`ssd`: rows per importance batch)",
    "retain_weight": "weight of the cross-entropy on the retained data (0: no retained-data term)",
    "beta": "NPO's inverse temperature",
    "forget_weight": "weight of the random-label term on the forget rows",
    "gamma": "initial L1 strength, decaying linearly to 0 over the steps",
    "sparsity": "fraction of the weights (largest forget-gradient saliency) allowed to change; the others stay "
                "bit-identical",
    "alpha": "selection: a parameter is dampened where its forget importance exceeds `alpha` x its retain importance",
    "lam": "dampening: a selected parameter is scaled by `min(lam * I_retain / I_forget, 1)`",
    "retain_batches": "batches of retained rows per trainer for the retain importance",
}
_METHOD_NAMES = {"ft": "FT", "ga": "GA", "npo": "NPO", "rl": "RL", "l1_sparse": "l1-sparse", "salun": "SalUn",
                 "ssd": "SSD"}


def _method_docs() -> dict[str, str]:
    import dataclasses

    from ostracon.nodes.approximate_params import PARAMS

    return {f"unlearning.{method}.{f.name}": f"{_METHOD_NAMES[method]}: {_METHOD_PARAMS[f.name]}"
            for method, params in PARAMS.items() for f in dataclasses.fields(params)}


DOCS.update(_method_docs())
