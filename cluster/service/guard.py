"""What every call passes through after auth: the request decoded here (a malformed body is
INVALID_ARGUMENT, logged once a minute per client at most), and a cap on the calls the open services
(health, reflection) may hold at once.

Every handler is re-shaped to read its request itself (request-streaming, raw bytes): the call's
coroutine starts as soon as the headers arrive, so a call whose body never comes is counted (and let go
when the caller leaves), and the body's bytes are decoded under our control instead of grpc's (which
answers INTERNAL and logs a traceback per bad body).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc
import grpc.aio

from .auth import OPEN_SERVICES, deny_handler, service_of

log = logging.getLogger("ostracon.cluster.service")

MAX_OPEN_CALLS = 256  # health + reflection calls held at once (no token needed); more: RESOURCE_EXHAUSTED
MAX_OPEN_REQUEST_BYTES = 64 * 1024  # one health/reflection request message; larger ones are refused undecoded
BAD_BODY_LOG_INTERVAL_S = 60.0  # at most one log line per client (peer host) per interval
_MAX_LOGGED_PEERS = 4096  # the rate limiter forgets old peers beyond this; it never grows past it


class RateLimitedLog:
    """One line per key per ``interval`` seconds; a bounded memory of keys."""

    def __init__(self, interval: float = BAD_BODY_LOG_INTERVAL_S, max_keys: int = _MAX_LOGGED_PEERS):
        self.interval, self.max_keys = interval, max_keys
        self._last: dict[str, float] = {}

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        if last is None and len(self._last) >= self.max_keys:
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
            if len(self._last) >= self.max_keys:
                return False  # a flood of distinct peers: stay silent rather than grow
        self._last[key] = now
        return True


def _detached(exc: BaseException) -> BaseException:
    """``exc`` without its traceback. A traceback keeps the frames of the servicer code it passed through,
    and with them the decoded request (up to the receive limit); grpc keeps a call's exception in a reference
    cycle, so without this the request outlives the call until the next full garbage collection."""
    exc.__traceback__ = None
    exc.__context__ = None
    return exc


def peer_host(context) -> str:
    """'ipv4:127.0.0.1:5555' -> 'ipv4:127.0.0.1' (a client, not one of its connections)."""
    peer = context.peer() or "unknown"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Decode requests ourselves; cap the open services' concurrent calls."""

    def __init__(self, max_open_calls: int = MAX_OPEN_CALLS, open_services: tuple[str, ...] = OPEN_SERVICES,
                 max_open_request_bytes: int = MAX_OPEN_REQUEST_BYTES):
        self.max_open_calls = max_open_calls
        self.max_open_request_bytes = max_open_request_bytes
        self.open_calls = 0  # touched on the event loop only
        self._open = frozenset(open_services)
        self._bad_body_log = RateLimitedLog()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # UNIMPLEMENTED
        counted = service_of(handler_call_details.method) in self._open
        return self._wrap(handler, handler_call_details.method, counted)

    # ----- the pieces ------------------------------------------------------------------------------
    async def _enter(self, counted: bool, context) -> None:
        if not counted:
            return
        if self.open_calls >= self.max_open_calls:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"too many open health/reflection calls (limit {self.max_open_calls}); retry later")
        self.open_calls += 1

    def _leave(self, counted: bool) -> None:
        if counted:
            self.open_calls -= 1

    async def _bad_body(self, context, method: str, exc: BaseException):
        peer = peer_host(context)
        if self._bad_body_log.allow(peer):
            log.warning("malformed request body for %s from %s (%s); further ones from this client are not "
                        "logged for %.0f s", method, peer, type(exc).__name__, self._bad_body_log.interval)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"the request body is not a valid {method} request message")

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str, counted: bool) -> grpc.RpcMethodHandler:
        deserialize: Callable | None = handler.request_deserializer
        serialize = handler.response_serializer
        guard = self

        async def decode(raw, context):
            if counted and len(raw) > guard.max_open_request_bytes:
                # gRPC has one receive limit for every method; the open services get this smaller one here,
                # before the body is parsed (and copied) at all.
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"request message of {len(raw)} bytes is larger than this service accepts "
                                    f"(limit {guard.max_open_request_bytes})")
            if deserialize is None:
                return raw
            try:
                return deserialize(raw)
            except Exception as exc:  # noqa: BLE001 - any decoding failure is the caller's malformed body
                await guard._bad_body(context, method, exc)

        async def one_request(request_iterator, context):
            # context.read(), not the iterator: an iterator left after its first message would keep that
            # message (up to the receive limit) alive until the call's objects are collected.
            raw = await context.read()
            if raw is grpc.aio.EOF:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no request message for {method}")
            return await decode(raw, context)

        async def requests(request_iterator, context) -> AsyncIterator:
            async for raw in request_iterator:
                yield await decode(raw, context)

        async def responses(result) -> AsyncIterator:
            if inspect.isasyncgen(result):
                async for response in result:
                    yield response
            else:
                await result  # a behavior that writes with context.write

        if not handler.request_streaming and not handler.response_streaming:
            behavior = handler.unary_unary

            async def unary_unary(request_iterator, context):
                await guard._enter(counted, context)
                try:
                    return await behavior(await one_request(request_iterator, context), context)
                except BaseException as exc:  # noqa: BLE001 - re-raised at once
                    raise _detached(exc)  # noqa: B904 - the same exception, without the frames that hold the request
                finally:
                    guard._leave(counted)

            return grpc.stream_unary_rpc_method_handler(unary_unary, response_serializer=serialize)
        if not handler.request_streaming:
            stream_behavior = handler.unary_stream

            async def unary_stream(request_iterator, context):
                await guard._enter(counted, context)
                request = None
                try:
                    request = await one_request(request_iterator, context)
                    async for response in responses(stream_behavior(request, context)):
                        yield response
                except BaseException as exc:  # noqa: BLE001 - re-raised at once
                    request = None
                    raise _detached(exc)  # noqa: B904 - the same exception, without the frames that hold the request
                finally:
                    guard._leave(counted)

            return grpc.stream_stream_rpc_method_handler(unary_stream, response_serializer=serialize)
        if not handler.response_streaming:
            su_behavior = handler.stream_unary

            async def stream_unary(request_iterator, context):
                await guard._enter(counted, context)
                try:
                    return await su_behavior(requests(request_iterator, context), context)
                finally:
                    guard._leave(counted)

            return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serialize)
        ss_behavior = handler.stream_stream

        async def stream_stream(request_iterator, context):
            await guard._enter(counted, context)
            try:
                async for response in responses(ss_behavior(requests(request_iterator, context), context)):
                    yield response
            finally:
                guard._leave(counted)

        return grpc.stream_stream_rpc_method_handler(stream_stream, response_serializer=serialize)


__all__ = ["GuardInterceptor", "RateLimitedLog", "deny_handler", "MAX_OPEN_CALLS"]
