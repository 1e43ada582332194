"""The ``ostracon`` command line."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from importlib import metadata

from .config import BACKENDS, load, parse_overrides
from .errors import OstraconError, RequestError, StateDirError
from .vocabulary import DeletionMode, OperationState

log = logging.getLogger("ostracon")

# Commands that create state files (raw rows in stores, the ledger of deleted ids, checkpoints,
# certificates): they run with umask 077, so what they create is 0600/0700 (README, "Limits").
PRIVATE_COMMANDS = ("train", "serve", "unlearn")
PRIVATE_UMASK = 0o077

# `ostracon serve` input limits: flag -> (Deployment argument, default, meaning); README, "Limits".
# The defaults repeat coordinator.deployment.DEFAULT_* (importing it would load torch for every command);
# tests/test_input_bounds.py checks they agree.
SERVE_LIMITS = {
    "--max-id-chars": ("max_id_chars", 256, "longest sample id accepted"),
    "--max-idempotency-key-chars": ("max_idempotency_key_chars", 256, "longest idempotency key accepted"),
    "--max-predict-rows": ("max_predict_rows", 4096, "most rows in one Predict"),
    "--max-predict-bytes": ("max_predict_bytes", 16 * 1024 * 1024, "most input bytes in one Predict"),
}

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
    p.add_argument("--backend", choices=BACKENDS, help="override backend.name")
    p.add_argument("--address", help="Ray cluster address ('auto', 'HOST:PORT' or 'ray://...'); implies --backend ray")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.rounds=50 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")

    p = sub.add_parser("unlearn", help="delete samples from a trained state directory (exact replay, or a gated "
                                       "approximate update)")
    p.add_argument("--state-dir", required=True)
    ids = p.add_mutually_exclusive_group(required=True)
    ids.add_argument("--ids", help="comma-separated sample ids; spaces around each id are ignored")
    ids.add_argument("--ids-file", help="file with one sample id per line, taken verbatim (UTF-8; only the line "
                                        "ending is removed; empty lines are skipped)")
    ids.add_argument("--ids-json", help="a JSON list of sample ids, for ids with commas or surrounding spaces, "
                                        "e.g. '[\" a\", \"b,c\"]'")
    ids.add_argument("--resume", action="store_true",
                     help="only finish requests an interrupted command left unfinished (and repair)")
    p.add_argument("--mode", choices=DeletionMode.values(), default=DeletionMode.EXACT.value,
                   help="exact (SISA replay, default), approximate (a gated approximate update; exact if it fails "
                        "the gate) or approximate_then_exact (the approximate update at once, then the replay)")
    p.add_argument("--method", default=None,
                   help="approximate method: ft, ga, npo, rl, l1_sparse, salun, ssd (default unlearning.method)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an approximate-unlearning setting, e.g. --set unlearning.salun.lr=0.1 or "
                        "--set unlearning.gate.max_test_drop=0.05 (repeatable)")
    p.add_argument("--backend", choices=BACKENDS, help="override backend.name")
    p.add_argument("--address", help="Ray cluster address; implies --backend ray")
    p.add_argument("--out", help="also write the certificate JSON here (its folder is created if missing)")

    p = sub.add_parser("verify", help="audit a state directory: ledger, stores, certificates, checkpoints, "
                                      "then a retrain from scratch (exit 0 ok, 1 failed, 3 requests pending)")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--backend", choices=BACKENDS, help="override backend.name")
    p.add_argument("--address", help="Ray cluster address; implies --backend ray")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--allow-approximate", action="store_true",
                   help="accept groups that serve approximately unlearned models (reported, not compared); "
                        "without it they fail as APPROXIMATE_NOT_VERIFIABLE")

    p = sub.add_parser("bench", help="run a benchmark and print its table")
    p.add_argument("name", choices=("robustness", "aggregators", "scale", "unlearning", "unlearning_methods",
                                    "service"))
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")

    p = sub.add_parser("demo", help="the main job: train on Ray with Byzantine workers, serve it, delete through "
                                     "the gRPC service (a worker killed mid-replay), report, verify")
    p.add_argument("-o", "--outdir", default=None, help="where to write the run (default: a new temp dir)")
    p.add_argument("--backend", choices=BACKENDS, default="ray",
                   help="ray (default: a local Ray runtime in this process) or local (in-process workers, "
                        "faster; no actor is killed)")
    p.add_argument("--keep-serving", action="store_true",
                   help="after the report, serve the state on the same port until Ctrl-C")
    p.add_argument("--clean", action="store_true", help="remove the run's folder at the end")

    p = sub.add_parser("serve", help="run the coordinator: a gRPC deletion service over a warm cluster")
    p.add_argument("--state-dir", required=True, help="state directory (trained first when empty and -c is given)")
    p.add_argument("-c", "--config", help="TOML config to train with when the state directory holds no trained state")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other needs a token, and TLS or --insecure)")
    p.add_argument("--port", type=int, default=50051, help="port to bind (0: a free one; see server.json)")
    p.add_argument("--backend", choices=BACKENDS, help="override backend.name")
    p.add_argument("--address", help="Ray cluster address; implies --backend ray")
    p.add_argument("--token-file", help="file holding the bearer token clients must send (wins over $OSTRACON_TOKEN)")
    p.add_argument("--tls-cert", help="PEM certificate chain for TLS (with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key for TLS (with --tls-cert)")
    p.add_argument("--insecure", action="store_true",
                   help="serve plaintext on a non-loopback --host (TLS terminated in front, or a trusted network)")
    p.add_argument("--max-ids-per-request", type=int, default=10_000,
                   help="most sample ids in one Delete, duplicates included (default 10000)")
    for flag, (dest, default, what) in SERVE_LIMITS.items():
        p.add_argument(flag, dest=dest, type=int, default=default, help=f"{what} (default {default})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an approximate-unlearning setting for the requests it serves, e.g. "
                        "--set unlearning.method=ft (repeatable)")

    p = sub.add_parser("delete", help="ask a coordinator to delete samples (prints the operation)")
    _client_options(p)
    ids = p.add_mutually_exclusive_group(required=True)
    ids.add_argument("--ids", help="comma-separated sample ids; spaces around each id are ignored")
    ids.add_argument("--ids-file", help="file with one sample id per line, taken verbatim")
    ids.add_argument("--ids-json", help="a JSON list of sample ids")
    p.add_argument("--mode", choices=DeletionMode.values(), default=DeletionMode.EXACT.value)
    p.add_argument("--method", default="", help="approximate-unlearning method (approximate modes)")
    p.add_argument("--idempotency-key", default="",
                   help="retrying with the same key and ids returns the same operation")
    p.add_argument("--wait", action="store_true", help="follow the operation to its final state (live progress)")

    p = sub.add_parser("ops", help="list a coordinator's operations, newest first")
    _client_options(p)
    p.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    p.add_argument("--json", action="store_true", help="print them as JSON")

    p = sub.add_parser("status", help="a coordinator's cluster: workers, model version, queue depth")
    _client_options(p)
    p.add_argument("--json", action="store_true", help="print it as JSON")

    p = sub.add_parser("certificate", help="the deletion certificate covering an operation")
    _client_options(p)
    p.add_argument("operation_id", metavar="OP_ID")
    p.add_argument("--json", action="store_true", help="print the full certificate JSON")
    return parser


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="the coordinator's HOST:PORT")
    p.add_argument("--token-file", help="file holding the bearer token (wins over $OSTRACON_TOKEN)")
    p.add_argument("--tls-ca", help="PEM CA certificate to verify a TLS coordinator")
    p.add_argument("--insecure", action="store_true",
                   help="send the token in plaintext to a non-loopback --target (without --tls-ca)")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline of each call in seconds (default 30)")


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        # A shell starts a background job (`ostracon serve ... &`) with SIGINT ignored, and Python keeps
        # that: restore the default so `kill -INT` and Ctrl-C interrupt it like a foreground command.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with private_files() if args.command in PRIVATE_COMMANDS else nullcontext():
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        print(f"ostracon: interrupted{_interrupted_hint(args)}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error ends as one line (or a traceback for a bug)
        message = user_error_message(exc)
        if message is None:  # a bug, not a user error: show where it happened
            traceback.print_exc()
            print(f"ostracon: internal error ({type(exc).__name__}); the traceback above says where",
                  file=sys.stderr)
            return 1
        if args.verbose:
            traceback.print_exc()
        print(f"ostracon: error: {message}", file=sys.stderr)
        return 2


@contextmanager
def private_files() -> Iterator[None]:
    """Run the block with umask 077 (files 0600, folders 0700), then restore the caller's umask."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


# Path and disk problems: the user can fix them, and the message names the path.
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
USER_OS_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def user_error_message(exc: BaseException) -> str | None:
    """One line for an error the user can act on (ostracon's own, or a path problem); None for a bug."""
    if isinstance(exc, OstraconError):
        return _one_line(str(exc))
    if isinstance(exc, USER_OS_ERRORS) or (isinstance(exc, OSError) and exc.errno in USER_OS_ERRNOS):
        if exc.filename is None:
            return _one_line(str(exc))
        return _one_line(f"{exc.strerror}: {exc.filename}")
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _interrupted_hint(args) -> str:
    outdir = getattr(args, "outdir", None)
    if args.command == "train" and outdir and os.path.isdir(outdir) \
            and not os.path.exists(os.path.join(outdir, "state.json")):
        return f"; {outdir} holds an incomplete run (no state.json): remove it before training there again"
    return ""


def configure_logging(verbose: bool) -> None:
    """ostracon's own lines on stderr (``-v``: debug, Ray's too); other libraries log only errors."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


def _backend_overrides(args) -> dict:
    out = {}
    if getattr(args, "address", None):
        out["backend.name"] = "ray"
        out["backend.address"] = args.address
    if getattr(args, "backend", None):
        out["backend.name"] = args.backend
    return out


def _unlearn_overrides(args) -> dict:
    """``--set`` (approximate-unlearning keys only; checked by the state) plus the backend flags."""
    return parse_overrides(args.overrides) | _backend_overrides(args)


def cmd_train(args) -> int:
    from .execution.plan import validate_run
    from .execution.training import train

    overrides = parse_overrides(args.overrides) | _backend_overrides(args)
    config = load(args.config, overrides)
    index = validate_run(config)  # data and model errors before the output directory exists
    if config.backend.name == "ray":
        from .execution.ray_backend import check_reachable

        check_reachable(config.backend)
    result = train(config, args.outdir, progress=not args.no_progress, index=index)
    print(f"trained {result.summary['rounds']} rounds in {result.summary['wall_time_s']:.1f}s: "
          f"{accuracy_line(result.summary)}; results in {args.outdir}")
    return 0


def accuracy_line(summary: dict) -> str:
    acc, ensemble = summary["honest_test_accuracy"], summary["ensemble_test_accuracy"]
    if ensemble is None:
        return summary.get("note", "accuracy not measured")
    return (f"honest test accuracy min {acc['min']:.4f} mean {acc['mean']:.4f} max {acc['max']:.4f}; "
            f"ensemble {ensemble:.4f}")


def cmd_unlearn(args) -> int:
    from .unlearning import format_certificate, unlearn_state_dir

    if args.resume:
        require_writable_dir(args.state_dir, "--state-dir")
        result = unlearn_state_dir(args.state_dir, overrides=_unlearn_overrides(args), resume_only=True)
        for cert in result["recovered"]:
            print(format_certificate(cert))
        print(f"finished {len(result['recovered'])} interrupted request(s)" if result["recovered"]
              else "nothing to resume: no request was left unfinished")
        return 0
    ids = requested_ids(args)
    out = prepare_output_file(args.out) if args.out else None
    require_writable_dir(args.state_dir, "--state-dir")
    cert = unlearn_state_dir(args.state_dir, ids, mode=args.mode, overrides=_unlearn_overrides(args),
                             method=args.method)
    for rid in cert.get("recovered", []):
        print(f"finished interrupted request {rid} first")
    print(format_certificate(cert))
    if out:
        with open(out, "w") as fh:
            json.dump(cert, fh, indent=2, sort_keys=True)
    return 0


def requested_ids(args) -> list[str]:
    """The ids of ``--ids`` (comma-separated, spaces around each stripped), ``--ids-json`` (a JSON list of
    strings, taken as given) or ``--ids-file`` (one id per line, verbatim but for the line ending)."""
    if args.ids is not None:
        return [i.strip() for i in args.ids.split(",") if i.strip()]
    if args.ids_json is not None:
        return _json_ids(args.ids_json)
    return read_ids_file(args.ids_file)


def _json_ids(text: str) -> list[str]:
    try:
        ids = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(f"--ids-json: not valid JSON ({exc}); expected a list of strings, "
                           "e.g. '[\" a\", \"b\"]'") from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise RequestError(f"--ids-json: expected a JSON list of strings, got {text[:80]!r}")
    return ids


def read_ids_file(path: str) -> list[str]:
    """One id per line, taken verbatim except the line ending (``\\n`` or ``\\r\\n``); empty lines skipped."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise RequestError(f"--ids-file {path}: no such file") from None
    except IsADirectoryError:
        raise RequestError(f"--ids-file {path}: is a directory, expected a text file of ids") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"--ids-file {path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                           f"{exc.start}); expected one sample id per line") from None
    ids = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if _has_control_characters(line):
            raise RequestError(f"--ids-file {path}: line {number} holds control characters ({line[:40]!r}); "
                               "expected one sample id per line")
        if line:
            ids.append(line)
    return ids


def _has_control_characters(text: str) -> bool:
    """Binary garbage, not an id: any ASCII control character but the tab."""
    return any((ch < " " and ch != "\t") or ch == "\x7f" for ch in text)


def prepare_output_file(path: str) -> str:
    """Check (creating its folder) that ``path`` can receive a file, before anything else changes."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise RequestError(f"--out {path} is a directory; give the certificate's file name")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    require_writable_dir(os.path.dirname(path), "--out")
    return path


def require_writable_dir(path: str, option: str) -> None:
    """Refuse a directory this process cannot write to (a read-only state directory), before any change."""
    if not os.path.isdir(path):
        return  # a missing state directory is reported by whoever reads it
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise StateDirError(f"{option} {path} is not writable ({exc.strerror}); nothing was changed") from None


def cmd_verify(args) -> int:
    from .unlearning import format_report, verify_state_dir

    report = verify_state_dir(args.state_dir, overrides=_backend_overrides(args),
                              allow_approximate=args.allow_approximate)
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

    if not args.verbose:  # the demo prints its own progress; ostracon's log shows warnings only (-v: all)
        log.setLevel(logging.WARNING)
    return run_demo(args.outdir, backend=args.backend, keep_serving_after=args.keep_serving, clean=args.clean)


def cmd_serve(args) -> int:
    from .service.auth import load_server_token
    from .service.server import serve

    if args.max_ids_per_request < 1:
        raise RequestError(f"--max-ids-per-request {args.max_ids_per_request}: must be at least 1")
    limits = {}
    for flag, (dest, _, _) in SERVE_LIMITS.items():
        value = getattr(args, dest)
        if value < 1:
            raise RequestError(f"{flag} {value}: must be at least 1")
        limits[dest] = value
    if not 0 <= args.port <= 65535:
        raise RequestError(f"--port {args.port}: not a TCP port (0-65535; 0 picks a free one)")
    return serve(args.state_dir, config_path=args.config, overrides=_unlearn_overrides(args), host=args.host,
                 port=args.port, token=load_server_token(args.token_file), tls_cert=args.tls_cert, tls_key=args.tls_key,
                 max_ids_per_request=args.max_ids_per_request, insecure=args.insecure, **limits)


def _client(args):
    from .service.auth import load_token
    from .service.client import CoordinatorClient

    if not args.timeout > 0:
        raise RequestError(f"--timeout {args.timeout}: must be a positive number of seconds")
    return CoordinatorClient(args.target, token=load_token(args.token_file), timeout=args.timeout,
                             tls_ca=args.tls_ca, insecure=args.insecure)


def operation_line(op: dict) -> str:
    version = f", model version {op['model_version']}" if op["model_version"] else ""
    message = f": {op['message']}" if op["message"] else ""
    return (f"operation {op['id']} {op['state']} {op['progress']:.0%} ({len(op['sample_ids'])} id(s), "
            f"mode {op['mode']}{version}){message}")


def cmd_delete(args) -> int:
    ids = requested_ids(args)
    with _client(args) as client:
        op = client.delete(ids, mode=args.mode, method=args.method, idempotency_key=args.idempotency_key)
        print(operation_line(op), flush=True)
        if not args.wait:
            return 0
        for _, event in client.watch(op["id"]):
            if event != op:
                log.info("%s", operation_line(event))  # live progress on stderr
            op = event
    print(operation_line(op))
    return 0 if op["state"] == OperationState.SUCCEEDED else 1


def cmd_ops(args) -> int:
    if args.limit < 1:
        raise RequestError(f"--limit {args.limit}: must be at least 1")
    with _client(args) as client:
        ops, _ = client.operations(page_size=args.limit)
    if args.json:
        print(json.dumps(ops, indent=2))
    else:
        for op in ops:
            print(operation_line(op))
        if not ops:
            print("no operations yet")
    return 0


def cmd_status(args) -> int:
    with _client(args) as client:
        status = client.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    alive = sum(w["alive"] for w in status["workers"])
    print(f"backend {status['backend']}, model version {status['model_version']}, queue depth "
          f"{status['queue_depth']}, {alive}/{len(status['workers'])} workers alive")
    for w in status["workers"]:
        role = "byzantine" if w["byzantine"] else "honest"
        node = f" on {w['node']}" if w["node"] else ""
        print(f"  worker {w['index']} group {w['group']} {role} {'alive' if w['alive'] else 'DEAD'}, "
              f"{w['restarts']} restart(s){node}")
    return 0


def cmd_certificate(args) -> int:
    from .unlearning import format_certificate

    with _client(args) as client:
        cert = client.certificate(args.operation_id)
    print(json.dumps(cert, indent=2, sort_keys=True) if args.json else format_certificate(cert))
    return 0


COMMANDS = {"train": cmd_train, "unlearn": cmd_unlearn, "verify": cmd_verify, "bench": cmd_bench,
            "demo": cmd_demo, "serve": cmd_serve, "delete": cmd_delete, "ops": cmd_ops, "status": cmd_status,
            "certificate": cmd_certificate}

if __name__ == "__main__":
    sys.exit(main())
