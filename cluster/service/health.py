"""``grpc.health.v1.Health`` on the asyncio server: answers only the names this server serves.

The stock servicer keeps every name a caller ever asked to ``Watch`` (a dict key per name, forever) and
answers unknown names with SERVICE_UNKNOWN; an unauthenticated caller could grow it without bound. This one
holds a fixed table (``""`` and ``ostracon.v1.Coordinator``), answers NOT_FOUND for any other name and keeps
nothing per caller: a ``Watch`` waits on one shared asyncio event that is replaced on every change.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

OVERALL = ""  # the whole server, as the health protocol names it
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MAX_NAME_CHARS = 200  # a name longer than this is not echoed back in the status details


class HealthServicer(health_pb2_grpc.HealthServicer):
    """Statuses of a fixed set of names; :meth:`set` may be called from any thread."""

    def __init__(self, names: tuple[str, ...], loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._status = dict.fromkeys(names, NOT_SERVING)
        self._changed = asyncio.Event()  # created here; only ever touched on ``loop``
        self._shutting_down = False

    def set(self, name: str, status: int) -> None:
        """Change ``name``'s status; a Check that starts after this returns sees it."""
        if name not in self._status:
            raise KeyError(f"{name!r} is not a name this health service answers for")
        self._on_loop(self._set, name, status)

    def enter_graceful_shutdown(self) -> None:
        """Every name NOT_SERVING, and no later :meth:`set` changes that."""
        self._on_loop(self._shutdown)

    def _on_loop(self, fn, *args) -> None:
        """Run ``fn`` on the event loop (which owns the statuses and the event) and wait for it."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            fn(*args)
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def call() -> None:
            try:
                fn(*args)
                done.set_result(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(call)
        done.result(timeout=30)

    def _shutdown(self) -> None:
        for name in self._status:
            self._set(name, NOT_SERVING)
        self._shutting_down = True

    def _set(self, name: str, status: int) -> None:
        if self._shutting_down or self._status[name] == status:
            return
        self._status[name] = status
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # wakes every Watch; the next change uses a fresh event

    async def _known(self, request, context) -> int:
        if request.service not in self._status:
            name = request.service if len(request.service) <= MAX_NAME_CHARS else request.service[:MAX_NAME_CHARS] + "…"
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown service {name!r}: this server answers for "
                                f"{', '.join(repr(n) for n in self._status)}")
        return self._status[request.service]

    async def Check(self, request, context):
        return health_pb2.HealthCheckResponse(status=await self._known(request, context))

    async def Watch(self, request, context):
        last = await self._known(request, context)
        name = request.service
        del request  # keep nothing of the request while the stream is open
        yield health_pb2.HealthCheckResponse(status=last)
        while True:
            await self._changed.wait()
            status = self._status[name]
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
