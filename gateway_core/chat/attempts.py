"""The attempt loop: one request, tried on its model's routes in order until one answers.

A failure that happens before the first byte reaches the client (connection
refused, timeout, upstream 429, 5xx, 529 overloaded, a stream that breaks
before its first chunk) moves on to the next route. Retry-After is honoured:
a route is not called again sooner than it asked, and if the only routes left
would need a longer wait than the request's deadline (or max_retry_wait)
allows, the request fails. Deterministic failures (the upstream rejected the
request itself: 400/401/403/404/413/422) are never retried. Once a stream's
first chunk is out, there is no fallback: a later error goes in-band.

Every attempt is one structured log line and one UPSTREAM_ATTEMPTS count. The
request's one hold covers every attempt (its price is the model's, not the
route's), and `meter.admission` always names the route of the current attempt,
so the usage record names the provider and upstream model that answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Generic, NamedTuple, TypeVar

from gateway_core.chat.idle_watch import IdleWatch
from gateway_core.chat.meter import Admission, RequestMeter
from gateway_core.chat.retry_budget import RetryBudget
from gateway_core.chat.route_health import RouteHealth
from gateway_core.chat.route_order import route_order
from gateway_core.config import ModelSettings, ProviderSettings, Route, RoutingSettings
from gateway_core.deadline_timer import DeadlineTimer
from gateway_core.errors import GatewayError, Reason
from gateway_core.metrics import FALLBACKS, UPSTREAM_ATTEMPTS, UPSTREAM_RETRIES, HotLabels
from gateway_core.observability import json_lines
from gateway_core.observability.after_answer import after_answer
from gateway_core.pb.gateway.v1 import chat_pb2
from gateway_core.providers.base import Provider, ProviderError, UpstreamCall
from gateway_core.providers.chunk_batches import ChunkBatches, batches_of

log = logging.getLogger("tollgate.routing")

Chunk = chat_pb2.StreamChatCompletionResponse
Response = chat_pb2.CreateChatCompletionResponse
T = TypeVar("T")

# Upstream statuses that say nothing about the request itself: another try may succeed.
_TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
_CALLERS_FAULT = frozenset({Reason.INVALID_REQUEST, Reason.UNSUPPORTED_PARAMETER, Reason.REQUEST_TOO_LARGE})
# A route that failed without a Retry-After is tried again (if at all) after this, doubling.
_BACKOFF_SECONDS = 0.1
_BACKOFF_CAP_SECONDS = 2.0
_UPSTREAM_ATTEMPTS = HotLabels(UPSTREAM_ATTEMPTS)  # provider, route, outcome
_ATTEMPT_MESSAGE = (
    "upstream_attempt request_id=%(request_id)s model=%(model)s provider=%(provider)s route=%(route)s "
    "attempt=%(attempt)d outcome=%(outcome)s latency_ms=%(latency_ms)d upstream_status=%(upstream_status)s"
)
_BUSY_MESSAGE = "the upstream provider for this model is over capacity; try again later"


def retryable(error: ProviderError) -> bool:
    """Whether another attempt (on this route or another) could answer where this one failed."""
    if error.quota_exhausted:
        return True  # on another route: this one is cooled down for long
    if error.reason in _CALLERS_FAULT:
        return False
    status = error.upstream_status
    if status is None:  # transport failures, broken or malformed answers, in-stream errors
        return True
    return status in _TRANSIENT_STATUSES or status >= 500


class _NoRoute(Exception):
    """Every route left would need a wait the request cannot afford (wait: the shortest, if known)."""

    def __init__(self, wait: float | None) -> None:
        super().__init__()
        self.wait = wait


@dataclasses.dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a setattr call per field
class _Started(Generic[T]):
    """The attempt that returned: what it returned, its route, whether it is a half-open probe. Never changed."""

    result: T
    route: Route
    probe: bool
    began: float
    number: int


class _Timing:
    """One request's deadline and per-route retry waits. One per request."""

    def __init__(self, admission: Admission, settings: RoutingSettings, health: RouteHealth) -> None:
        timeout = admission.call.timeout_seconds
        self.deadline = None if timeout is None else admission.started + timeout
        self._settings = settings
        self._health = health
        self._local_not_before: dict[Route, float] = {}
        self._failures: dict[Route, int] = {}

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        return 0.0 if 0.0 > left else left  # max(left, 0.0) without the builtin (~8x a comparison)

    def wait(self, route: Route) -> float:
        # Comparisons rather than max(): this runs for every attempt, and the builtin costs ~8x as much.
        local = self._local_not_before.get(route, 0.0) - time.monotonic()
        if 0.0 > local:
            local = 0.0
        health = self._health.wait_seconds(route)
        return local if local > health else health

    def affordable(self, wait: float) -> bool:
        remaining = self.remaining()
        return wait <= self._settings.max_retry_wait_seconds and (remaining is None or wait < remaining)

    def failed(self, route: Route) -> None:
        count = self._failures[route] = self._failures.get(route, 0) + 1
        delay = min(_BACKOFF_SECONDS * 2 ** (count - 1), _BACKOFF_CAP_SECONDS) * random.uniform(0.5, 1.0)
        self._local_not_before[route] = time.monotonic() + delay


class RouteAttempts:
    """Chooses routes and runs the attempt loop. One per core; safe to share between requests."""

    def __init__(
        self,
        settings: RoutingSettings,
        providers: Mapping[str, Provider],
        provider_settings: Mapping[str, ProviderSettings],
        *,
        health: RouteHealth | None = None,
        budget: RetryBudget | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._providers = providers
        self._provider_settings = provider_settings
        self.health = health or RouteHealth(settings)
        self.budget = budget or RetryBudget(settings.retry_budget_ratio, settings.retry_budget_burst)
        self._rng = rng or random.Random()
        # Every stream's silence limit, on one timer of the event loop the streams run on (see idle_watch).
        self._idle_timer: DeadlineTimer | None = None  # made by the first stream, on its loop
        self._idle_timer_loop: asyncio.AbstractEventLoop | None = None

    def order(self, model: ModelSettings) -> tuple[Route, ...]:
        """The routes one new request will try, in order; the request also earns the retry budget."""
        self.budget.on_request()
        return route_order(model.routes, self.health, self._rng)

    async def complete(self, meter: RequestMeter) -> Response:
        """A unary answer from the first route that gives one."""

        async def attempt(admission: Admission, limits: ProviderSettings) -> Response:
            return await admission.provider.complete(admission.call)

        started = await self._run(meter, attempt)
        self.health.succeeded(started.route, started.probe)
        _log_attempt(meter, started.route, started.number, "ok", started.began)
        return started.result

    async def open_stream(self, meter: RequestMeter) -> StartedStream:
        """The stream of the first route whose stream starts, its first chunks read; after them there is
        no fallback. The caller reads it on, then close()s it with how it ended (the attempt's verdict)."""

        async def attempt(admission: Admission, limits: ProviderSettings) -> _Opened:
            chunks = batches_of(admission.provider.stream(admission.call))
            # One deadline for the whole stream (see idle_watch): the first chunk's limit, then the idle one.
            watch = IdleWatch(limits.first_token_timeout_seconds, self._idle_deadlines())
            watch.waiting()
            try:
                first = await chunks.next_batch()
            except BaseException as error:
                watch.stop()
                # As asyncio.timeout: a cut of the watch's own is taken back whatever it turned into.
                timed_out = watch.timed_out() and isinstance(error, asyncio.CancelledError)
                await _close(chunks)
                if timed_out:
                    raise ProviderError(Reason.UPSTREAM_TIMEOUT, "upstream timed out",
                                        upstream_body="no first chunk within first_token_timeout_seconds") from None
                raise
            finally:
                watch.waited()
            watch.set_limit(limits.idle_timeout_seconds)
            return _Opened(chunks, first, watch)

        started = await self._run(meter, attempt)
        return StartedStream(self, meter, started)

    def _idle_deadlines(self) -> DeadlineTimer:
        """The streams' shared DeadlineTimer, on the running loop (a new one if the loop is another)."""
        loop = asyncio.get_running_loop()
        timer = self._idle_timer
        if timer is None or self._idle_timer_loop is not loop:  # the first stream, or one on another loop (tests run many)
            timer = self._idle_timer = DeadlineTimer()
            self._idle_timer_loop = loop
        return timer

    async def _run(
        self, meter: RequestMeter, attempt: Callable[[Admission, ProviderSettings], Awaitable[T]]
    ) -> _Started[T]:
        """Tries routes until one attempt returns; raises the last failure when none does.

        The caller gives the verdict on the attempt that returned (health, log line)."""
        first = meter.admission
        routes = first.routes or (_route_of(first),)
        timing = _Timing(first, self._settings, self.health)
        ruled_out: set[Route] = set()
        last_error: ProviderError | None = None
        for number in range(1, self._settings.max_attempts + 1):
            try:
                route, wait = self._next(routes, ruled_out, timing)
            except _NoRoute as none:
                raise _final_error(last_error, none.wait) from None
            if number > 1:
                if not self.budget.try_retry():
                    log.warning("retry budget spent; not retrying request %s", first.call.request_id)
                    raise _final_error(last_error, None)
                UPSTREAM_RETRIES.labels(first.model.name).inc()
            if wait > 0:
                await asyncio.sleep(wait)
            admission = self._admission_for(first, route, timing)
            meter.admission = admission
            probe = self.health.acquire(route)
            began = time.monotonic()
            try:
                result = await attempt(admission, self._limits(route))
            except ProviderError as error:
                _log_attempt(meter, route, number, error.reason.value, began, error=error)
                if not retryable(error):
                    self.health.release(route, probe)
                    raise
                self.health.failed(route, probe, retry_after=error.retry_after_seconds,
                                   quota_exhausted=error.quota_exhausted)
                timing.failed(route)
                if error.quota_exhausted:
                    ruled_out.add(route)
                last_error = error
                continue
            except BaseException as other:  # the client left, or a failure of ours: says nothing of the route
                self.health.release(route, probe)
                _log_attempt(meter, route, number, _other_outcome(other), began)
                raise
            if route != routes[0]:
                FALLBACKS.labels(first.model.name).inc()
            return _Started(result, route, probe, began, number)
        raise _final_error(last_error, None)

    def _next(
        self, routes: tuple[Route, ...], ruled_out: set[Route], timing: _Timing
    ) -> tuple[Route, float]:
        """The next route and how long to wait for it first.

        The first route (in order) that is ready now and whose breaker lets calls through;
        failing that, the first that is ready now at all: if every remaining route's circuit is
        open, a call that may succeed beats an error for sure (route_order puts the
        longest-open first). Failing that, the route ready soonest, if the request can afford
        the wait (Retry-After is never cut short)."""
        candidates = [route for route in routes if route not in ruled_out]
        if not candidates:
            raise _NoRoute(None)
        if len(candidates) == 1:  # most models have one route: ready now, or the wait it can afford
            only = candidates[0]
            wait = timing.wait(only)
            if wait == 0:
                return only, 0.0
            if not timing.affordable(wait):
                raise _NoRoute(wait)
            return only, wait
        ready = [route for route in candidates if timing.wait(route) == 0]
        healthy = [route for route in ready if self.health.available(route)]
        if healthy:
            return healthy[0], 0.0
        if ready:
            return ready[0], 0.0
        soonest = min(candidates, key=timing.wait)
        wait = timing.wait(soonest)
        if not timing.affordable(wait):
            raise _NoRoute(wait)
        return soonest, wait

    def _limits(self, route: Route) -> ProviderSettings:
        """The route's provider settings (their defaults when none were given, as in unit tests)."""
        return self._provider_settings.get(route.provider) or ProviderSettings(name=route.provider, type="mock")

    def _admission_for(self, first: Admission, route: Route, timing: _Timing) -> Admission:
        limits = self._limits(route)
        remaining = timing.remaining()
        timeout = limits.total_timeout_seconds
        if remaining is not None and remaining < timeout:  # min(), minus the builtin's cost
            timeout = remaining
        # Built field by field: dataclasses.replace inspects the fields on every call (twice per attempt).
        base = first.call
        call = UpstreamCall(
            request=base.request, upstream_model=route.model, client_model=base.client_model,
            request_id=base.request_id, timeout_seconds=0.001 if 0.001 > timeout else timeout, forward_headers=base.forward_headers,
        )
        return Admission(
            model=first.model, provider=self._providers[route.provider], call=call, hold=first.hold,
            prompt_estimate=first.prompt_estimate, max_completion_tokens=first.max_completion_tokens,
            started=first.started, routes=first.routes, limit_headers=first.limit_headers,
        )


class _Opened(NamedTuple):
    """A stream attempt that got its first chunks: the stream, those chunks, its silence watch."""

    chunks: ChunkBatches
    first: list[Chunk] | None
    watch: IdleWatch


class StartedStream:
    """A route's stream once its first chunks are in: the rest, batch by batch, under the idle limit.

    An error from here on goes to the client in-band (no fallback). close(error) gives the attempt's
    verdict once, whoever ends it: the upstream closed, the route's health told, its log line written.
    One per streamed request; read by one task.
    """

    __slots__ = ("first", "_attempts", "_meter", "_started", "_chunks", "_watch", "_closed")

    def __init__(self, attempts: RouteAttempts, meter: RequestMeter, started: _Started[_Opened]) -> None:
        opened = started.result
        self.first = opened.first  # the first batch (None: the stream ended before any chunk)
        self._attempts = attempts
        self._meter = meter
        self._started = started
        self._chunks = opened.chunks
        self._watch = opened.watch
        self._closed = False

    @property
    def ended(self) -> bool:
        """The upstream stream has ended cleanly: next_batch() returns None at once (False if unknown)."""
        return getattr(self._chunks, "ended", False)  # type: ignore[no-any-return]

    async def next_batch(self) -> list[Chunk] | None:
        """The next chunks that arrived together; None at the end; a ProviderError if the upstream fails."""
        watch = self._watch
        watch.waiting()
        try:
            return await self._chunks.next_batch()
        except asyncio.CancelledError:
            if watch.timed_out():
                raise ProviderError(Reason.UPSTREAM_TIMEOUT, "upstream timed out",
                                    upstream_body="silent past idle_timeout_seconds") from None
            raise
        finally:
            watch.waited()

    async def close(self, error: BaseException | None) -> None:
        """Ends the attempt (once): None if the stream was read to its end, else what ended it."""
        if self._closed:
            return
        self._closed = True
        self._watch.stop()
        started, health = self._started, self._attempts.health
        route, probe = started.route, started.probe
        if error is None:
            outcome = "ok"
            health.succeeded(route, probe)
        elif isinstance(error, ProviderError):  # after the first chunk: in-band, no fallback
            outcome = error.reason.value
            health.failed(route, probe, retry_after=None, quota_exhausted=False)
        else:
            outcome = _other_outcome(error)
            health.release(route, probe)
        try:
            await _close(self._chunks)
        finally:
            _log_attempt(self._meter, route, started.number, outcome, started.began, streamed=True)


def _route_of(admission: Admission) -> Route:
    return Route(provider=admission.provider.name, model=admission.call.upstream_model)


def _final_error(last: ProviderError | None, wait: float | None) -> ProviderError:
    """What the client sees when no route answered: the last failure, except that an operator's
    exhausted quota (or a wait we could not afford) reads as the upstream being busy, never as
    the caller's own quota or balance."""
    if last is not None and not last.quota_exhausted:
        return last
    return ProviderError(
        Reason.UPSTREAM_RATE_LIMITED, _BUSY_MESSAGE,
        upstream_status=None if last is None else last.upstream_status,
        upstream_body="" if last is None else last.upstream_body,
        retry_after_seconds=None if wait is None else max(round(wait, 3), 0.001),
    )


def _other_outcome(error: BaseException) -> str:
    """The log/metric outcome of an attempt that ended by something other than a ProviderError."""
    if isinstance(error, GatewayError):
        return error.reason.value
    return "cancelled" if isinstance(error, (asyncio.CancelledError, GeneratorExit)) else "error"


async def _close(chunks: ChunkBatches) -> None:
    """Closes an upstream stream (and its connection); closing errors are not the caller's."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        try:  # (not contextlib.suppress: three calls more on every stream)
            await aclose()
        except Exception:  # noqa: BLE001 - closing errors are not the caller's
            pass


def _log_attempt(
    meter: RequestMeter, route: Route, number: int, outcome: str, began: float, *,
    error: ProviderError | None = None, streamed: bool = False,
) -> None:
    """One line per attempt, as text and as `extra` fields for structured handlers; one count.

    The fields are taken now; the line and the count follow once the call's answer is out."""
    fields = {
        "request_id": meter.admission.call.request_id,
        "model": meter.admission.model.name,
        "provider": route.provider,
        "route": route.model,
        "attempt": number,
        "outcome": outcome,
        "latency_ms": int((time.monotonic() - began) * 1000),
        "upstream_status": None if error is None else error.upstream_status,
        "streamed": streamed,
    }
    after_answer(_write_attempt, fields)


def _write_attempt(fields: dict[str, object]) -> None:
    _UPSTREAM_ATTEMPTS.labels(fields["provider"], fields["route"], fields["outcome"]).inc()
    if json_lines.info_line(log, _ATTEMPT_MESSAGE % fields, {"upstream_attempt": fields}):
        return
    log.info(_ATTEMPT_MESSAGE, fields, extra={"upstream_attempt": fields})
