"""Bearer-token auth: a server interceptor that denies by default, and where the token comes from.

Every method needs ``authorization: Bearer <token>`` except the standard health and reflection services,
which probes and generic clients reach without one. The comparison is constant-time.
"""

from __future__ import annotations

import functools
import hmac
import os
from collections.abc import Mapping

import grpc
import grpc.aio

from ..errors import ConfigError, RequestError

TOKEN_ENV = "OSTRACON_TOKEN"
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")


def load_token(token_file: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The token of ``token_file`` (which wins) or of ``$OSTRACON_TOKEN``, surrounding whitespace stripped;
    None when neither is given."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except FileNotFoundError:
            raise RequestError(f"--token-file {token_file}: no such file") from None
        except IsADirectoryError:
            raise RequestError(f"--token-file {token_file}: is a directory, expected a file holding the token") \
                from None
        except UnicodeDecodeError:
            raise RequestError(f"--token-file {token_file}: not UTF-8 text") from None
        return _checked(token, f"--token-file {token_file}")
    if env.get(TOKEN_ENV) is not None:
        return _checked(env[TOKEN_ENV].strip(), f"${TOKEN_ENV}")
    return None


MIN_SERVER_TOKEN_BYTES = 32  # what `ostracon serve` accepts (secrets.token_urlsafe(32) gives 43)
WEAK_TOKEN_ENV = "OSTRACON_ALLOW_WEAK_TOKEN"  # "1": skip the two checks below (tests and local drills only)


def load_server_token(token_file: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """:func:`load_token` for the server, which also refuses a token a guess or another user could read: one
    shorter than MIN_SERVER_TOKEN_BYTES, or a file that others may read or the group may write (group read is
    allowed: Kubernetes mounts a Secret 0440 for the pod's fsGroup). ``$OSTRACON_ALLOW_WEAK_TOKEN=1`` skips
    both checks."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    token = load_token(token_file, env)
    if token is None or env.get(WEAK_TOKEN_ENV) == "1":
        return token
    source = f"--token-file {token_file}" if token_file else f"${TOKEN_ENV}"
    if token_file:
        mode = os.stat(token_file).st_mode
        if mode & 0o027:
            raise ConfigError(f"{source}: the file's mode is {mode & 0o777:04o}, readable or writable beyond its owner "
                              f"(and group, read-only); chmod 600 {token_file}")
    if len(token.encode("utf-8")) < MIN_SERVER_TOKEN_BYTES:
        raise ConfigError(f"{source}: the token is {len(token)} bytes, shorter than {MIN_SERVER_TOKEN_BYTES}; make "
                          "one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token


def _checked(token: str, source: str) -> str:
    """A token must be non-empty visible ASCII: it travels as a gRPC metadata value."""
    if not token:
        raise ConfigError(f"{source}: the token is empty")
    if not all("!" <= ch <= "~" for ch in token):
        raise ConfigError(f"{source}: the token must be visible ASCII characters without spaces")
    return token


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata a client sends (nothing without a token)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def service_of(method: str) -> str:
    """'/pkg.Service/Method' -> 'pkg.Service'."""
    return method.lstrip("/").split("/", 1)[0]


def presented_token(metadata) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":  # RFC 6750: the scheme is case-insensitive
                return token.strip().encode("utf-8")
    return None


async def _deny_behavior(code: grpc.StatusCode, message: str, request_iterator, context) -> None:
    await context.abort(code, message)


def deny_handler(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler that refuses at once, whatever the method's shape: request-streaming, so the server never
    waits for (nor reads) the request body: a refused caller holds nothing while it stalls or uploads."""
    return grpc.stream_stream_rpc_method_handler(functools.partial(_deny_behavior, code, message))


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Default deny: a call passes only with the right bearer token, or to an open (health, reflection)
    service. A refusal is answered from the call's headers, before any servicer code runs or the body is
    read."""

    def __init__(self, token: str, open_services: tuple[str, ...] = OPEN_SERVICES):
        self._token = token.encode("utf-8")
        self._open = frozenset(open_services)

    async def intercept_service(self, continuation, handler_call_details):
        if service_of(handler_call_details.method) in self._open:
            return await continuation(handler_call_details)
        presented = presented_token(handler_call_details.invocation_metadata)
        if presented is not None and hmac.compare_digest(presented, self._token):
            return await continuation(handler_call_details)
        message = ("missing bearer token: send metadata 'authorization: Bearer <token>'" if presented is None
                   else "invalid bearer token")
        return deny_handler(grpc.StatusCode.UNAUTHENTICATED, message)
