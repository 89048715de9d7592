"""The chat request path: auth -> validate -> route -> hold -> provider -> settle.

Every admitted request (one whose hold succeeded) is settled exactly once and
leaves exactly one usage record, whatever happens: success, upstream failure,
the client leaving (the upstream is drained for a bounded time to learn its
real usage), or cancellation while the hold itself was being written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway_core.auth import Authenticator, Principal
from gateway_core.chat.attempts import RouteAttempts
from gateway_core.background import BackgroundTasks
from gateway_core.chat.meter import Admission, RequestMeter, cancelled_before_upstream, set_billed_usage
from gateway_core.chat.stream_run import StreamRun
from gateway_core.chat.upstream_drain import UpstreamDrain
from gateway_core.chat.validate import validate_request
from gateway_core.config import MeteringSettings, ModelSettings, Route, RoutingSettings
from gateway_core.limits.enforcer import LimitEnforcer, Lease
from gateway_core.metering.ledger import Ledger
from gateway_core.metering.outcome import Hold, Settlement, UsageOutcome, UsageStatus
from gateway_core.metering.usage import apply_output_limit, hold_micros
from gateway_core.pb.gateway.v1 import chat_pb2
from gateway_core.providers.base import ChatRequest, Provider, UpstreamCall
from gateway_core.request_ids import new_request_id
from gateway_core.routing import Router
from gateway_core.tokens import estimate_prompt_tokens

log = logging.getLogger("tollgate.chat")

# Keep this much of the caller's deadline for our own bookkeeping after upstream answers.
_DEADLINE_MARGIN_SECONDS = 0.05
_SETTLE_RETRY_DELAYS = (0.05, 0.25, 1.0, 4.0)
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
Metadata = Sequence[tuple[str, Any]]


class ChatPipeline:
    """Admits, runs and settles chat requests. One per core; safe to share between calls."""

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        router: Router,
        providers: Mapping[str, Provider],
        ledger: Ledger,
        metering: MeteringSettings,
        background: BackgroundTasks,
        attempts: RouteAttempts | None = None,
        limits: LimitEnforcer | None = None,
    ) -> None:
        self._auth = authenticator
        self._router = router
        self._providers = providers
        self._ledger = ledger
        self._metering = metering
        self._background = background
        self._attempts = attempts or RouteAttempts(RoutingSettings(), providers, {})
        self._drains = 0
        self._limits = limits
        # Limit leases of admitted requests, by request id; finished when the request settles.
        self._leases: dict[str, Lease] = {}

    async def start_stream(self, request: ChatRequest, metadata: Metadata, time_remaining: float | None,
                           admitted: Callable[[Admission], None]) -> StreamRun:
        """Admits a streamed request up to its hold (auth, validation, route, limits) and starts its StreamRun.

        Hold, upstream read and settlement run in the run's one task apart from the caller, so a caller
        cancelled at any point after its limits were taken still leaves the request settled exactly once
        (see StreamRun). admitted(admission) is called in that task once the hold is written, before the
        upstream request; a refused hold is raised by the run's first read. The caller reads the run, then
        close()s it however it ends.
        """
        prepared = await self._prepare(request, metadata, time_remaining)
        return StreamRun(self, prepared, admitted)

    async def _prepare(self, request: ChatRequest, metadata: Metadata, time_remaining: float | None) -> _Prepared:
        """Everything of admission but the hold: auth, validation, route, estimate, limits (lease taken)."""
        started = time.monotonic()
        principal = await self._auth.authenticate(metadata)
        validate_request(request)
        model = self._router.resolve(request.model, principal)
        routes = self._attempts.order(model)
        route = routes[0]
        provider = self._providers[route.provider]
        limit = apply_output_limit(request, model)
        prompt_estimate = estimate_prompt_tokens(request)
        call = UpstreamCall(
            request=request,
            upstream_model=route.model,
            client_model=request.model,
            request_id=request.request_id or _metadata_value(metadata, "x-request-id") or new_request_id(),
            timeout_seconds=None if time_remaining is None else max(time_remaining - _DEADLINE_MARGIN_SECONDS, 0.001),
            forward_headers=_trace_headers(metadata) if metadata else (),
        )
        hold_args = dict(
            request_id=call.request_id,
            account_id=principal.account_id,
            api_key_id=principal.api_key_id,
            amount_micros=hold_micros(request, model, prompt_estimate=prompt_estimate, output_limit=limit),
            model=model.name,
            provider=provider.name,
            upstream_model=route.model,
        )
        lease = await self._take_limits(principal, call.request_id, prompt_estimate)
        choices = request.n if request.HasField("n") else 1
        return _Prepared(model, provider, call, prompt_estimate, choices * limit, started, routes, lease, hold_args)

    def _drop_lease(self, prepared: _Prepared) -> None:
        """The hold failed or its caller left while it was written: the limits go back now."""
        request_id, lease = prepared.call.request_id, prepared.lease
        if self._leases.get(request_id) is lease:
            del self._leases[request_id]
        self._background.spawn(lease.finish(None), name=f"limits-{request_id}")

    async def unary(
        self, request: ChatRequest, metadata: Metadata, time_remaining: float | None,
        admitted: Callable[[Admission], None],
    ) -> chat_pb2.CreateChatCompletionResponse:
        """Runs a unary request: admits it, calls upstream and settles before answering.

        Hold, upstream call and settlement run in one task apart from the caller (_UnaryRun), so
        a caller cancelled at any point after its limits were taken still leaves the request
        settled exactly once. admitted(admission) is called once the hold is written, before the
        upstream call.
        """
        prepared = await self._prepare(request, metadata, time_remaining)
        run = _UnaryRun(self, prepared, admitted)
        # The task hands its outcome over through `answer`, which is all a cancellation of this
        # caller cancels (as asyncio.shield would keep the task apart, one loop pass sooner).
        answer: asyncio.Future[chat_pb2.CreateChatCompletionResponse] = asyncio.get_running_loop().create_future()
        work = asyncio.ensure_future(run.run(answer))
        try:
            return await answer
        except asyncio.CancelledError:
            if answer.done() and not answer.cancelled():
                answer.exception()  # answered just as the caller left: mark it read, nobody else will
            run.abandon(work)
            raise

    async def _take_limits(self, principal: Principal, request_id: str, prompt_estimate: int) -> Lease:
        """Spends the caller's rate and concurrency limits (429 if over); remembered until settle."""
        if self._limits is None:
            return Lease(None, request_id)
        lease = await self._limits.admit(
            account_id=principal.account_id,
            key_id=principal.api_key_id,
            key_limits=(principal.rpm_limit, principal.tpm_limit, principal.concurrency_limit),
            request_id=request_id,
            token_estimate=prompt_estimate,
        )
        # A reused request id is refused by the hold (ALREADY_EXISTS); the first request keeps its lease.
        if lease.limiter is not None and request_id not in self._leases:
            self._leases[request_id] = lease
        return lease

    async def _settle_with_retries(self, hold: Hold, outcome: UsageOutcome) -> Settlement:
        """Settles (retrying); however that ends, finishes the request's limit lease: slots back, tokens corrected."""
        try:
            return await self._settle_retrying(hold, outcome)
        finally:
            lease = self._leases.pop(hold.request_id, None)
            if lease is not None:
                await lease.finish(outcome.prompt_tokens + outcome.completion_tokens)

    async def _settle_retrying(self, hold: Hold, outcome: UsageOutcome) -> Settlement:
        """Settlement is idempotent, so a failed write (a busy or restarting database) is retried."""
        for delay in _SETTLE_RETRY_DELAYS:
            try:
                return await self._ledger.settle(hold, outcome)
            except Exception:  # noqa: BLE001 - logged; retried; the last attempt raises
                log.warning("settling %s failed; retrying in %.2fs", hold.request_id, delay, exc_info=True)
                await asyncio.sleep(delay)
        return await self._ledger.settle(hold, outcome)

    def _may_drain(self) -> bool:
        return self._drains < self._metering.max_concurrent_drains


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a setattr call per field
class _Prepared:
    """A request admitted up to its hold: checked, routed, estimated, its limits taken. Never changed."""

    model: ModelSettings
    provider: Provider
    call: UpstreamCall
    prompt_estimate: int
    max_completion_tokens: int
    started: float
    routes: tuple[Route, ...]
    lease: Lease
    hold_args: dict[str, Any]

    def admission(self, hold: Hold) -> Admission:
        return Admission(
            self.model, self.provider, self.call, hold, self.prompt_estimate, self.max_completion_tokens,
            self.started, self.routes, limit_headers=self.lease.headers,
        )


class _UnaryRun:
    """One unary request's hold, upstream call and settlement, in one task apart from its caller.

    If the caller leaves (abandon()), the task carries on by itself: a hold being written is
    settled at zero once it lands (the limits go back at once); an upstream call being made is
    drained for drain_seconds (when fewer than max_concurrent_drains run) and billed as
    CANCELLED with what it produced; a settlement being written completes. One per request;
    runs on the caller's event loop.
    """

    _HOLD, _UPSTREAM, _SETTLE = "hold", "upstream", "settle"

    def __init__(self, pipeline: ChatPipeline, prepared: _Prepared, admitted: Callable[[Admission], None]) -> None:
        self._pipeline = pipeline
        self._prepared = prepared
        self._admitted = admitted
        self._phase = self._HOLD
        self._abandoned = False
        self._drain: UpstreamDrain | None = None  # set once the caller left during the upstream call

    async def run(self, answer: asyncio.Future[chat_pb2.CreateChatCompletionResponse]) -> None:
        """Runs the request and sets answer to the billed response or the error, unless the caller
        has left (answer cancelled): then an error is this task's own, for the background tasks to log."""
        try:
            response = await self._run()
        except BaseException as error:
            if answer.done():
                raise
            if isinstance(error, asyncio.CancelledError):
                answer.cancel()
                raise
            answer.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        if response is not None and not answer.done():
            answer.set_result(response)

    async def _run(self) -> chat_pb2.CreateChatCompletionResponse | None:
        """The billed response; None once the caller has left (nobody reads it then)."""
        pipeline, prepared = self._pipeline, self._prepared
        try:
            hold = await pipeline._ledger.hold(**prepared.hold_args)
        except BaseException:
            if not self._abandoned:  # abandon() gave the limits back already
                pipeline._drop_lease(prepared)
            if self._abandoned:
                return None  # as _release_late_hold: a refused hold has nothing to settle
            raise
        if self._abandoned:  # the caller left while the hold was written: settle it at zero
            await pipeline._settle_with_retries(hold, cancelled_before_upstream(prepared.hold_args))
            return None
        admission = prepared.admission(hold)
        self._admitted(admission)
        meter = RequestMeter(admission)
        self._phase = self._UPSTREAM
        try:
            response = await pipeline._attempts.complete(meter)
        except BaseException:
            self._end_upstream()
            if self._abandoned:  # the drain ended (cut, or the upstream failed): bill what was seen
                return await self._bill_abandoned(meter)
            await pipeline._settle_with_retries(admission.hold, meter.outcome(UsageStatus.UPSTREAM_ERROR))
            raise
        self._end_upstream()
        if self._abandoned:  # drained: the upstream answered after the caller left
            meter.observe_response(response)
            return await self._bill_abandoned(meter)
        meter.observe_response(response)
        outcome = meter.outcome(UsageStatus.OK)
        settlement = await pipeline._settle_with_retries(admission.hold, outcome)
        set_billed_usage(response.usage, outcome, settlement.charged_micros)  # every field: as CopyFrom would
        response.provider = meter.admission.provider.name  # the route that answered
        return response

    def _end_upstream(self) -> None:
        """The upstream call is over: no cut may reach the settlement (UpstreamDrain.end_upstream)."""
        self._phase = self._SETTLE
        if self._drain is not None:
            self._drain.end_upstream(asyncio.current_task())

    async def _bill_abandoned(self, meter: RequestMeter) -> None:
        if self._drain is not None:
            self._drain.release()
        await self._pipeline._settle_with_retries(meter.admission.hold, meter.outcome(UsageStatus.CANCELLED))

    def abandon(self, work: asyncio.Task[Any]) -> None:
        """The caller was cancelled: the task finishes alone, watched by the pipeline's background tasks."""
        if work.done():
            return
        pipeline = self._pipeline
        self._abandoned = True
        pipeline._background.adopt(work)
        if self._phase == self._HOLD:
            pipeline._drop_lease(self._prepared)
        elif self._phase == self._UPSTREAM:

            def cut() -> bool:  # ends the upstream call: the task goes on to bill what it saw
                if self._phase == self._UPSTREAM and not work.done():
                    work.cancel()
                    return True
                return False

            self._drain = UpstreamDrain(pipeline, cut)


def _metadata_value(metadata: Metadata, key: str) -> str:
    for name, value in metadata:
        if name == key and isinstance(value, str):
            return value[:128]
    return ""


def _trace_headers(metadata: Metadata) -> tuple[tuple[str, str], ...]:
    """W3C trace context from the caller, bounded: the only caller data that reaches upstream headers."""
    return tuple(
        (name, value)
        for name, value in metadata
        if name in _TRACE_HEADERS and isinstance(value, str) and len(value) <= 512 and value.isprintable()
    )
