"""The ``ostracon`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from importlib import metadata

from .config import ConfigError, load, parse_overrides
from .ledger import LedgerError
from .protocols import StageFailedError
from .statedir import StateDirError
from .unlearning.certificates import CertificateConflictError
from .unlearning.state import SourceChangedError

log = logging.getLogger("ostracon")

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _version() -> str:
    try:
        return metadata.version("ostracon")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ostracon",
        description="Robust collaborative training on Ray with exact machine unlearning.",
    )
    parser.add_argument("--version", action="version", version=f"ostracon {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model collaboratively (MoNNA or parameter server)")
    p.add_argument("-c", "--config", required=True, help="TOML config file")
    p.add_argument("-o", "--outdir", required=True, help="output and state directory (must be new)")
    p.add_argument("--backend", choices=("local", "ray"), help="override backend.name")
    p.add_argument("--address", help="Ray cluster address ('auto', 'HOST:PORT' or 'ray://...'); implies --backend ray")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.rounds=50 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")

    p = sub.add_parser("unlearn", help="delete samples from a trained state directory (exact replay)")
    p.add_argument("--state-dir", required=True)
    ids = p.add_mutually_exclusive_group(required=True)
    ids.add_argument("--ids", help="comma-separated sample ids")
    ids.add_argument("--ids-file", help="file with one sample id per line")
    ids.add_argument("--resume", action="store_true",
                     help="only finish requests an interrupted command left unfinished (and repair)")
    p.add_argument("--mode", choices=("exact",), default="exact")
    p.add_argument("--backend", choices=("local", "ray"), help="override backend.name")
    p.add_argument("--address", help="Ray cluster address; implies --backend ray")
    p.add_argument("--out", help="also write the certificate JSON here")

    p = sub.add_parser("verify", help="audit a state directory: ledger, stores, certificates, checkpoints, "
                                      "then a retrain from scratch (exit 0 ok, 1 failed, 3 requests pending)")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--backend", choices=("local", "ray"))
    p.add_argument("--address", help="Ray cluster address; implies --backend ray")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")

    p = sub.add_parser("bench", help="run a benchmark and print its table")
    p.add_argument("name", choices=("robustness", "aggregators", "scale", "unlearning"))
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")

    p = sub.add_parser("demo", help="train on digits with Byzantine workers, delete samples exactly, verify")
    p.add_argument("-o", "--outdir", default=None, help="where to write the run (default: a new temp dir)")
    p.add_argument("--backend", choices=("local", "ray"), default="local")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"ostracon: config error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, KeyError, ValueError, StateDirError, LedgerError,
            SourceChangedError, CertificateConflictError, StageFailedError) as exc:
        print(f"ostracon: error: {exc}", file=sys.stderr)
        return 2


def _backend_overrides(args) -> dict:
    out = {}
    if getattr(args, "address", None):
        out["backend.name"] = "ray"
        out["backend.address"] = args.address
    if getattr(args, "backend", None):
        out["backend.name"] = args.backend
    return out


def cmd_train(args) -> int:
    from .training import train

    overrides = parse_overrides(args.overrides) | _backend_overrides(args)
    config = load(args.config, overrides)
    result = train(config, args.outdir, progress=not args.no_progress)
    s = result.summary
    acc = s["honest_test_accuracy"]
    print(f"trained {s['rounds']} rounds in {s['wall_time_s']:.1f}s: honest test accuracy "
          f"min {acc['min']:.4f} mean {acc['mean']:.4f} max {acc['max']:.4f}; "
          f"ensemble {s['ensemble_test_accuracy']:.4f}; results in {args.outdir}")
    return 0


def cmd_unlearn(args) -> int:
    from .unlearning import format_certificate, unlearn_state_dir

    if args.resume:
        result = unlearn_state_dir(args.state_dir, mode=args.mode, overrides=_backend_overrides(args), resume_only=True)
        for cert in result["recovered"]:
            print(format_certificate(cert))
        print(f"finished {len(result['recovered'])} interrupted request(s)" if result["recovered"]
              else "nothing to resume: no request was left unfinished")
        return 0
    if args.ids is not None:
        ids = [i.strip() for i in args.ids.split(",") if i.strip()]
    else:
        with open(args.ids_file) as fh:
            ids = [line.strip() for line in fh if line.strip()]
    cert = unlearn_state_dir(args.state_dir, ids, mode=args.mode, overrides=_backend_overrides(args))
    for rid in cert.get("recovered", []):
        print(f"finished interrupted request {rid} first")
    print(format_certificate(cert))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(cert, fh, indent=2, sort_keys=True)
    return 0


def cmd_verify(args) -> int:
    from .unlearning import format_report, verify_state_dir

    report = verify_state_dir(args.state_dir, overrides=_backend_overrides(args))
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else format_report(report))
    if not report["ok"]:
        return 1
    return 3 if report["pending"] else 0


def cmd_bench(args) -> int:
    import runpy

    bench_dir = os.path.join(os.path.dirname(EXAMPLES_DIR), "bench")
    script = os.path.join(bench_dir, f"{args.name}.py")
    if not os.path.exists(script):
        raise FileNotFoundError(f"benchmark script not found: {script} (benchmarks ship with the source tree)")
    sys.argv = [script, *args.args]
    runpy.run_path(script, run_name="__main__")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.outdir, backend=args.backend)


COMMANDS = {"train": cmd_train, "unlearn": cmd_unlearn, "verify": cmd_verify, "bench": cmd_bench,
            "demo": cmd_demo}

if __name__ == "__main__":
    sys.exit(main())
