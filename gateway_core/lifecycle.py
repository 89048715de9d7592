"""How a tollgate process stops: the first SIGTERM/SIGINT drains, a second one cuts the rest.

Draining, in order: the core's health turns NOT_SERVING and it refuses new
RPCs (UNAVAILABLE) while in-flight ones run on; the facade answers /readyz and
new requests with 503 and lets running ones finish. When the grace period is
over (or at a second signal) the facade cuts what is left and the core cancels
its remaining calls; every cancelled request is still settled by the chat
pipeline's background drains, which the core awaits before it gives up its
hold lease and closes the database. Then the process exits 0. Nothing already
written is ever undone: stopping early only shortens the waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable

import uvicorn

from gateway_core.server import Core
from http_facade.drain import Drain

log = logging.getLogger("tollgate")

# The facade cuts its streams this long before the core cancels their calls,
# so a client sees the facade's clear shutdown error rather than a bare cancel.
_CORE_GRACE_MARGIN_SECONDS = 1.0
# After a second signal: how long settlements of cut requests may still take beyond the
# drain window (the pipeline reads a cut upstream that long to bill what it produced).
_HURRIED_SETTLE_MARGIN_SECONDS = 1.0
# uvicorn's own backstop once the facade has nothing running any more.
FACADE_CLOSE_SECONDS = 5.0


class ShutdownSignals:
    """SIGTERM/SIGINT as two events: `requested` at the first, `hurried` at the second."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.hurried = asyncio.Event()

    def install(self) -> None:
        """Routes both signals to this object; call from the running loop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._received, sig)

    def _received(self, sig: signal.Signals) -> None:
        if not self.requested.is_set():
            log.info("%s: draining (send it again to cut running requests now)", sig.name)
            self.requested.set()
        elif not self.hurried.is_set():
            log.warning("%s again: cutting what is still running; stopping once it is settled", sig.name)
            self.hurried.set()


async def _until(work: Awaitable[object], *, timeout: float, hurried: asyncio.Event) -> bool:
    """Waits for work, at most timeout seconds and not past `hurried`; whether it finished."""
    task = asyncio.ensure_future(work)
    hurry = asyncio.ensure_future(hurried.wait())
    try:
        done, _ = await asyncio.wait({task, hurry}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hurry.cancel()
    if task not in done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False
    return True


async def drain_facade(drain: Drain, server: uvicorn.Server, *, grace_seconds: float, hurried: asyncio.Event) -> None:
    """Refuses new HTTP requests, waits for running ones (up to grace), cuts the rest, stops uvicorn."""
    drain.begin()
    if drain.in_flight:
        log.info("waiting up to %.0fs for %d HTTP request(s)", grace_seconds, drain.in_flight)
    if not await _until(drain.wait_idle(), timeout=grace_seconds, hurried=hurried):
        drain.cut()
        await _until(drain.wait_idle(), timeout=FACADE_CLOSE_SECONDS, hurried=asyncio.Event())
    server.should_exit = True


async def stop_core(core: Core, *, grace_seconds: float, drain_seconds: float, hurried: asyncio.Event) -> None:
    """Stops the core: NOT_SERVING and UNAVAILABLE for new calls at once, in-flight calls up to
    grace (or until hurried), then settlements, the lease and the database.

    Hurried, settlements still get drain_seconds (plus a margin): a cut request's settlement
    waits that long for its upstream's usage, and one that misses it is only released later.
    """
    await core.health.enter_graceful_shutdown()
    # gRPC calls and calls from an in-process facade (`serve`) drain alike.
    stopping = asyncio.ensure_future(
        asyncio.gather(core.stop_calls(grace_seconds), core.local.stop(grace_seconds))
    )
    if not await _until(asyncio.shield(stopping), timeout=grace_seconds + 1.0, hurried=hurried):
        # A stop with no grace cancels every call still running.
        await asyncio.gather(core.server.stop(0), core.local.stop(0))
    await stopping
    hurried_settle = drain_seconds + _HURRIED_SETTLE_MARGIN_SECONDS
    settle_seconds = hurried_settle if hurried.is_set() else max(grace_seconds, drain_seconds + 5.0)
    settling = asyncio.ensure_future(core.background.wait(timeout_seconds=settle_seconds))
    if not await _until(asyncio.shield(settling), timeout=settle_seconds, hurried=hurried):
        await core.background.wait(timeout_seconds=hurried_settle)
    await core.stop(0, settle_seconds=0.0)  # the server is already stopped; closes the rest


async def run_until_signalled(
    signals: ShutdownSignals,
    *,
    core: Core | None,
    facade: tuple[Drain, uvicorn.Server] | None,
    grace_seconds: float,
    drain_seconds: float,
) -> None:
    """Serves until the first signal (or uvicorn stopping by itself), then drains both halves."""
    serving = asyncio.ensure_future(_serve(facade[1])) if facade else None
    requested = asyncio.ensure_future(signals.requested.wait())
    await asyncio.wait({requested, *([serving] if serving else [])}, return_when=asyncio.FIRST_COMPLETED)
    requested.cancel()
    work: list[Awaitable[None]] = []
    if core is not None:
        grace = grace_seconds + (_CORE_GRACE_MARGIN_SECONDS if facade else 0.0)
        work.append(stop_core(core, grace_seconds=grace, drain_seconds=drain_seconds, hurried=signals.hurried))
    if facade is not None and serving is not None:
        drain, server = facade
        work.append(_drain_then_close(drain, server, serving, grace_seconds, signals.hurried))
    # Both halves always run to their end, even if one fails (uvicorn could not bind, say).
    results = await asyncio.gather(*work, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    log.info("stopped")


async def _serve(server: uvicorn.Server) -> None:
    """uvicorn's serve(), but a failed start (sys.exit in uvicorn) becomes an exception in this
    task: a SystemExit would escape the event loop at once and skip stopping the core."""
    try:
        await server.serve()
    except SystemExit as exit_:
        raise FacadeStartFailed(exit_.code) from None


class FacadeStartFailed(Exception):
    """uvicorn could not start (it has logged why, e.g. the address is in use)."""

    def __init__(self, code: object) -> None:
        super().__init__(f"the HTTP facade could not start (exit code {code})")
        self.code = code if isinstance(code, int) else 1


async def _drain_then_close(
    drain: Drain, server: uvicorn.Server, serving: asyncio.Future[None], grace: float, hurried: asyncio.Event
) -> None:
    if not serving.done():
        await drain_facade(drain, server, grace_seconds=grace, hurried=hurried)
    await serving
