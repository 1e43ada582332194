"""Assemble and run the gRPC server: Coordinator + health + reflection, auth, TLS, limits, signals.

``serve`` is ``ostracon serve``: bind first (so a taken port fails before any training), warm the
deployment while health says NOT_SERVING, then say SERVING, print the address and write
``STATE_DIR/server.json``; SIGTERM (or Ctrl-C) stops new calls, drains the deployment and exits.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import sys
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ostracon.nodes.durable import write_bytes_atomic
from ostracon.v1 import coordinator_pb2_grpc as pb_grpc

from ..errors import ConfigError, RequestError, StateDirError
from .auth import BearerTokenInterceptor
from .servicer import SERVICE_NAME, CoordinatorServicer

log = logging.getLogger("ostracon.cluster.service")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # set explicitly (gRPC's default receive limit is 4 MiB)
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
SERVER_OPTIONS = CHANNEL_OPTIONS + [("grpc.so_reuseport", 0)]  # a port in use is an error, not shared
SERVER_JSON = "server.json"
STOP_GRACE_S = 5.0  # in-flight calls get this long once a stop is asked for


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another host name: it may resolve anywhere


def check_bind_allowed(host: str, token: str | None) -> None:
    """Refuse to expose an unauthenticated coordinator beyond this machine."""
    if token is None and not is_loopback(host):
        raise ConfigError(f"--host {host} is not a loopback address: refusing to serve without a token "
                          "(give --token-file or set OSTRACON_TOKEN, or bind 127.0.0.1)")


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
    return grpc.ssl_server_credentials([(pems[0], pems[1])])


class CoordinatorServer:
    """A bound (not yet started) gRPC server for ``deployment``; health says NOT_SERVING until
    :meth:`mark_serving`."""

    def __init__(self, deployment, *, host: str = "127.0.0.1", port: int = 50051, token: str | None = None,
                 credentials: grpc.ServerCredentials | None = None, max_workers: int = 32):
        check_bind_allowed(host, token)
        self.health = health.HealthServicer()
        for name in (SERVICE_NAME, health.OVERALL_HEALTH):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        interceptors = [BearerTokenInterceptor(token)] if token else []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
                                  interceptors=interceptors, options=SERVER_OPTIONS)
        pb_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(deployment), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                            self.server)
        wanted = format_address(host, port)
        try:
            bound = (self.server.add_secure_port(wanted, credentials) if credentials
                     else self.server.add_insecure_port(wanted))
        except RuntimeError as exc:  # grpcio raises on a failed bind in recent versions, returns 0 in older
            raise StateDirError(f"cannot listen on {wanted}: {exc}") from None
        if not bound:
            raise StateDirError(f"cannot listen on {wanted} (address in use, or not an address of this host)")
        self.address = format_address(host, bound)

    def start(self) -> None:
        self.server.start()

    def mark_serving(self) -> None:
        for name in (SERVICE_NAME, health.OVERALL_HEALTH):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


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
          tls_key: str | None = None, max_ids_per_request: int = 10_000, out=None) -> int:
    """Run the coordinator until SIGTERM/SIGINT; 0 after a SIGTERM drain, 130 after Ctrl-C."""
    out = out or sys.stdout
    credentials = tls_credentials(tls_cert, tls_key)
    check_bind_allowed(host, token)  # before anything loads or locks
    from ..coordinator.deployment import Deployment

    deployment = Deployment(state_dir, config_path=config_path, overrides=overrides,
                            max_ids_per_request=max_ids_per_request)
    server = CoordinatorServer(deployment, host=host, port=port, token=token, credentials=credentials)
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
