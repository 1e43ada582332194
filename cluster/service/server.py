"""Assemble and run the gRPC server: Coordinator + health + reflection, auth, TLS, limits, signals.

The server is ``grpc.aio`` on one event loop (a background thread shared by every server of the process),
so an idle stream or a call whose body never arrives holds no thread; the deployment's blocking calls run
in a bounded thread pool. :class:`CoordinatorServer` keeps a synchronous face (start, mark_serving, stop).

``serve`` is ``ostracon serve``: bind first (so a taken port fails before any training), warm the
deployment while health says NOT_SERVING, then say SERVING, print the address and write
``STATE_DIR/server.json``; SIGTERM (or Ctrl-C) stops new calls, drains the deployment and exits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import signal
import ssl
import sys
import threading
from collections.abc import Coroutine
from concurrent import futures
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ostracon.nodes.durable import write_bytes_atomic
from ostracon.v1 import coordinator_pb2_grpc as pb_grpc

from ..errors import ConfigError, RequestError, StateDirError
from .auth import BearerTokenInterceptor
from .guard import MAX_OPEN_CALLS, GuardInterceptor
from .health import OVERALL, SERVING, HealthServicer
from .servicer import MAX_WATCHES_PER_CALLER, SERVICE_NAME, CoordinatorServicer

log = logging.getLogger("ostracon.cluster.service")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # what a client accepts and sends (gRPC's default receive limit is 4 MiB)
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
SERVER_JSON = "server.json"
STOP_GRACE_S = 5.0  # in-flight calls get this long once a stop is asked for
HEALTH_SERVICE = "grpc.health.v1.Health"
MESSAGE_FRAMING_BYTES = 4 * 1024 * 1024  # a request's bytes beyond its Predict inputs (shape, dtype, framing)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """What one server lets its callers hold. gRPC has no per-method receive limit on the server, so
    ``max_receive_bytes`` applies to every service, the open ones (health, reflection) included."""

    max_concurrent_rpcs: int = 1024  # calls in flight, all services; more: RESOURCE_EXHAUSTED at once
    max_open_calls: int = MAX_OPEN_CALLS  # of which health + reflection (no token needed)
    max_watches_per_caller: int = MAX_WATCHES_PER_CALLER  # open WatchOperation streams per bearer token
    max_receive_bytes: int = 20 * 1024 * 1024  # one request message (Predict's 16 MiB of inputs, and framing)
    workers: int = 16  # threads running deployment calls (the event loop itself never blocks)
    keepalive_time_ms: int = 60_000  # ping a connection silent this long ...
    keepalive_timeout_ms: int = 20_000  # ... and close it if the ping is not answered within this
    max_connection_idle_ms: int = 5 * 60_000  # close a connection with no call for this long
    max_connection_age_ms: int = 2 * 3600_000  # ask every connection to reconnect after this long ...
    max_connection_age_grace_ms: int = 5 * 60_000  # ... letting its calls finish within this

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", self.max_receive_bytes),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not shared
                ("grpc.keepalive_time_ms", self.keepalive_time_ms),
                ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
                ("grpc.max_connection_idle_ms", self.max_connection_idle_ms),
                ("grpc.max_connection_age_ms", self.max_connection_age_ms),
                ("grpc.max_connection_age_grace_ms", self.max_connection_age_grace_ms)]


SERVER_OPTIONS = ServerLimits().options()


class _Loop:
    """The process's one event loop for gRPC servers, in a daemon thread, started on first use."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="ostracon-grpc-loop", daemon=True).start()
                cls._loop = loop
            return cls._loop


def _run_on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another host name: it may resolve anywhere


def check_bind_allowed(host: str, token: str | None, tls: bool = False, insecure: bool = False) -> None:
    """Refuse to expose the coordinator beyond this machine unauthenticated, or in plaintext unless asked:
    its bearer token (and every request) would cross the network readable by anyone on the path."""
    if is_loopback(host):
        return
    if token is None:
        raise ConfigError(f"--host {host} is not a loopback address: refusing to serve without a token "
                          "(give --token-file or set OSTRACON_TOKEN, or bind 127.0.0.1)")
    if not tls and not insecure:
        raise ConfigError(f"--host {host} is not a loopback address: refusing to serve plaintext gRPC (the bearer "
                          "token would cross the network readable); give --tls-cert and --tls-key, or --insecure "
                          "if TLS is terminated in front of the server or the network is trusted")


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def tls_credentials(cert_file: str | None, key_file: str | None) -> grpc.ServerCredentials | None:
    """Server TLS from PEM files (both or neither)."""
    if (cert_file is None) != (key_file is None):
        raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
    if cert_file is None or key_file is None:
        return None
    pems = []
    for option, path in (("--tls-key", key_file), ("--tls-cert", cert_file)):
        try:
            with open(path, "rb") as fh:
                pems.append(fh.read())
        except (FileNotFoundError, IsADirectoryError):
            raise RequestError(f"{option} {path}: no such file") from None
    check_tls_pair(cert_file, key_file)
    return grpc.ssl_server_credentials([(pems[0], pems[1])])


def check_tls_pair(cert_file: str, key_file: str) -> None:
    """Name a certificate and key that cannot serve together (gRPC would only say "cannot listen")."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file, password=lambda: b"")  # never prompts for a passphrase
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise ConfigError(f"--tls-key {key_file} is not the private key of --tls-cert {cert_file} "
                              "(key/certificate mismatch)") from None
        raise ConfigError(f"--tls-cert {cert_file} / --tls-key {key_file}: not a usable PEM certificate chain and "
                          f"unencrypted private key ({exc.reason or exc})") from None


class CoordinatorServer:
    """A bound (not yet started) gRPC server for ``deployment``; health says NOT_SERVING until
    :meth:`mark_serving`."""

    def __init__(self, deployment, *, host: str = "127.0.0.1", port: int = 50051, token: str | None = None,
                 credentials: grpc.ServerCredentials | None = None, limits: ServerLimits | None = None,
                 insecure: bool = False):
        check_bind_allowed(host, token, tls=credentials is not None, insecure=insecure)
        self.limits = limits or ServerLimits()
        self._loop = _Loop.get()
        self._pool = futures.ThreadPoolExecutor(max_workers=self.limits.workers, thread_name_prefix="ostracon-rpc")
        self.health = HealthServicer((OVERALL, SERVICE_NAME), self._loop)
        self.guard = GuardInterceptor(self.limits.max_open_calls)
        interceptors: list[grpc.aio.ServerInterceptor] = [BearerTokenInterceptor(token)] if token else []
        interceptors.append(self.guard)
        self.servicer = CoordinatorServicer(deployment, self._pool,
                                            max_watches_per_caller=self.limits.max_watches_per_caller,
                                            per_token=token is not None)
        wanted = format_address(host, port)
        try:
            self.server, bound = _run_on(self._loop, self._build(interceptors, wanted, credentials))
        except BaseException:
            self._pool.shutdown(wait=False)
            raise
        self.address = format_address(host, bound)

    async def _build(self, interceptors, wanted: str, credentials) -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(interceptors=interceptors, options=self.limits.options(),
                                 maximum_concurrent_rpcs=self.limits.max_concurrent_rpcs)
        pb_grpc.add_CoordinatorServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
        try:
            bound = server.add_secure_port(wanted, credentials) if credentials else server.add_insecure_port(wanted)
        except RuntimeError as exc:  # grpcio raises on a failed bind in recent versions, returns 0 in older
            raise StateDirError(f"cannot listen on {wanted}: {exc}") from None
        if not bound:
            raise StateDirError(f"cannot listen on {wanted} (address in use, or not an address of this host)")
        return server, bound

    def start(self) -> None:
        _run_on(self._loop, self.server.start())

    def mark_serving(self) -> None:
        for name in (SERVICE_NAME, OVERALL):
            self.health.set(name, SERVING)

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        self.health.enter_graceful_shutdown()
        try:
            _run_on(self._loop, self.server.stop(grace))
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)


def write_server_json(state_dir: str, address: str) -> str:
    """``{"address", "pid"}``, replaced atomically so a reader never sees half a file."""
    path = os.path.join(state_dir, SERVER_JSON)
    write_bytes_atomic(path, (json.dumps({"address": address, "pid": os.getpid()}) + "\n").encode())
    return path


def remove_server_json(state_dir: str) -> None:
    """Remove ``server.json`` if it is still this process's."""
    path = os.path.join(state_dir, SERVER_JSON)
    try:
        with open(path, encoding="utf-8") as fh:
            if json.load(fh).get("pid") == os.getpid():
                os.remove(path)
    except (OSError, ValueError):
        pass


def serve(state_dir: str, *, config_path: str | None = None, overrides: dict | None = None,
          host: str = "127.0.0.1", port: int = 50051, token: str | None = None, tls_cert: str | None = None,
          tls_key: str | None = None, max_ids_per_request: int = 10_000, out=None,
          limits: ServerLimits | None = None, insecure: bool = False, **deployment_limits: Any) -> int:
    """Run the coordinator until SIGTERM/SIGINT; 0 after a SIGTERM drain, 130 after Ctrl-C. ``limits``: the
    server's (connections, concurrency, streams); ``deployment_limits``: the Deployment's input limits;
    ``insecure``: serve plaintext on a non-loopback host (``--insecure``)."""
    out = out or sys.stdout
    credentials = tls_credentials(tls_cert, tls_key)
    check_bind_allowed(host, token, tls=credentials is not None, insecure=insecure)  # before anything loads or locks
    if credentials is None and not is_loopback(host):  # allowed by --insecure: say so where operators look
        log.warning("serving plaintext gRPC on %s (--insecure): the bearer token crosses the network unencrypted "
                    "unless TLS is terminated in front of this server", host)
    from ..coordinator.deployment import Deployment

    deployment = Deployment(state_dir, config_path=config_path, overrides=overrides,
                            max_ids_per_request=max_ids_per_request, **deployment_limits)
    if limits is None:  # a Predict as large as the deployment accepts must fit one message
        limits = ServerLimits()
        wanted = int(deployment_limits.get("max_predict_bytes") or 0) + MESSAGE_FRAMING_BYTES
        if wanted > limits.max_receive_bytes:
            limits = dataclasses.replace(limits, max_receive_bytes=wanted)
    server = CoordinatorServer(deployment, host=host, port=port, token=token, credentials=credentials, limits=limits,
                               insecure=insecure)
    received: list[int] = []
    stop = threading.Event()

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    started = False
    server.start()  # health answers NOT_SERVING while the cluster warms up
    try:
        if not stop.is_set():
            deployment.start()
            started = True
        if not stop.is_set():
            server.mark_serving()
            write_server_json(state_dir, server.address)
            print(f"serving {SERVICE_NAME} on {server.address}", file=out, flush=True)
            stop.wait()
        log.info("stopping: no new calls; draining the deployment")
    finally:
        server.stop()
        try:
            if started:
                deployment.close(drain=True)
        finally:
            remove_server_json(state_dir)
            for s, handler in previous.items():
                signal.signal(s, handler)
    return 130 if received and received[-1] == signal.SIGINT else 0
