"""Bearer-token auth: a server interceptor that denies by default, and where the token comes from.

Every method needs ``authorization: Bearer <token>`` except the standard health and reflection services,
which probes and generic clients reach without one. The comparison is constant-time.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

import grpc

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


def _service_of(method: str) -> str:
    """'/pkg.Service/Method' -> 'pkg.Service'."""
    return method.lstrip("/").split("/", 1)[0]


def _presented_token(metadata) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":  # RFC 6750: the scheme is case-insensitive
                return token.strip().encode("utf-8")
    return None


def _deny(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts at once, before any servicer code runs."""
    def abort(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is not None and handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler is not None and handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Default deny: a call passes only with the right bearer token, or to an open (health, reflection)
    service."""

    def __init__(self, token: str, open_services: tuple[str, ...] = OPEN_SERVICES):
        self._token = token.encode("utf-8")
        self._open = frozenset(open_services)

    def intercept_service(self, continuation, handler_call_details):
        if _service_of(handler_call_details.method) in self._open:
            return continuation(handler_call_details)
        presented = _presented_token(handler_call_details.invocation_metadata)
        if presented is not None and hmac.compare_digest(presented, self._token):
            return continuation(handler_call_details)
        message = ("missing bearer token: send metadata 'authorization: Bearer <token>'" if presented is None
                   else "invalid bearer token")
        return _deny(continuation(handler_call_details), message)
