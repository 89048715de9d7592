"""Turns a caller's key and account limits into counter checks, headers, errors and a lease.

One admit per request, after model resolution and before the money hold; the
returned Lease is finished on every settle path: it gives back concurrency
slots and replaces the up-front token estimate with the real usage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gateway_core.errors import GatewayError, Reason
from gateway_core.limits.accounts import AccountLimits, AccountLimitsCache
from gateway_core.limits.base import Limiter, LimiterUnavailable, RateCheck, SlotCheck
from gateway_core.limits.headers import rate_headers
from gateway_core.metrics import LIMIT_STORE_FAILURES
from gateway_core.request_ids import random_hex

log = logging.getLogger("tollgate.limits")

FAIL_OPEN = "open"
FAIL_CLOSED = "closed"
LIMITS_UNAVAILABLE_MESSAGE = "Rate limits cannot be checked right now (the limit store is unreachable). Retry shortly."
_UNAVAILABLE_RETRY_SECONDS = 1.0


@dataclass
class Lease:
    """What one admitted request took from the counters; finish() exactly once gives it back."""

    limiter: Limiter | None
    lease_id: str
    slot_keys: tuple[str, ...] = ()
    token_rates: tuple[RateCheck, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    finished: bool = field(default=False)

    async def finish(self, used_tokens: int | None) -> None:
        """Releases the slots; corrects token counters by (used - estimated). Idempotent; never raises."""
        if self.finished or self.limiter is None:
            return
        self.finished = True
        try:
            await self.limiter.release(self.slot_keys, self.lease_id)
            if used_tokens is not None:
                for rate in self.token_rates:
                    if used_tokens != rate.cost:
                        await self.limiter.correct(RateCheck(rate.key, rate.limit, used_tokens - rate.cost))
        except LimiterUnavailable:
            log.warning("could not return limits of %s; its slots expire with their lease", self.lease_id)
        except Exception:  # noqa: BLE001 - called from settle paths, which must not fail because of limits
            log.exception("returning limits of %s failed", self.lease_id)


@dataclass(frozen=True)
class _Plan:
    requests: tuple[RateCheck, ...]
    tokens: tuple[RateCheck, ...]
    slots: tuple[SlotCheck, ...]
    labels: tuple[str, ...]  # one per check, in order requests + tokens + slots


class LimitEnforcer:
    """Checks every limit of a request at once. One per process."""

    def __init__(self, limiter: Limiter, accounts: AccountLimitsCache, failure_policy: str = FAIL_OPEN) -> None:
        if failure_policy not in (FAIL_OPEN, FAIL_CLOSED):
            raise ValueError("failure_policy must be 'open' or 'closed'")
        self._limiter = limiter
        self._accounts = accounts
        self._policy = failure_policy

    async def admit(
        self, *, account_id: str, key_id: str, key_limits: tuple[int, int, int], request_id: str, token_estimate: int
    ) -> Lease:
        """Spends one request and token_estimate tokens on every applicable counter, or raises 429/503."""
        account = await self._accounts.get(account_id)
        if max(*key_limits, account.rpm_limit, account.tpm_limit, account.concurrency_limit) <= 0:
            return Lease(None, request_id)  # no limit set anywhere (the common case): nothing to plan or count
        plan = _plan(account_id, key_id, key_limits, account, max(token_estimate, 1))
        if not plan.labels:
            return Lease(None, request_id)
        _refuse_if_never_admissible(plan)
        # Unique per admission: a client reusing a request id must not share (or free) another's slot.
        lease_id = f"{request_id}:{random_hex(48)}"
        try:
            verdict = await self._limiter.admit(plan.requests + plan.tokens, plan.slots, lease_id)
        except LimiterUnavailable as exc:
            LIMIT_STORE_FAILURES.labels(policy=self._policy).inc()
            if self._policy == FAIL_CLOSED:
                raise GatewayError(
                    Reason.LIMITS_UNAVAILABLE, LIMITS_UNAVAILABLE_MESSAGE, retry_after_seconds=_UNAVAILABLE_RETRY_SECONDS
                ) from None
            log.warning("admitting %s without rate limits (fail-open): %s", request_id, exc)
            return Lease(None, request_id)
        n_requests = len(plan.requests)
        headers = tuple(
            rate_headers("requests", verdict.rates[:n_requests]) + rate_headers("tokens", verdict.rates[n_requests:])
        )
        if not verdict.allowed:
            raise GatewayError(
                Reason.RATE_LIMITED,
                f"Rate limit reached: {plan.labels[verdict.refused]}. Retry after the time in Retry-After.",
                retry_after_seconds=max(verdict.retry_after_seconds, 0.001),
                headers=headers,
            )
        return Lease(self._limiter, lease_id, tuple(s.key for s in plan.slots), plan.tokens, headers)

    async def close(self) -> None:
        await self._limiter.close()


def _refuse_if_never_admissible(plan: _Plan) -> None:
    """A prompt bigger than a whole minute's tokens would wait forever: say so instead of a Retry-After."""
    for index, rate in enumerate(plan.tokens):
        if rate.cost > rate.limit:
            label = plan.labels[len(plan.requests) + index]
            raise GatewayError(
                Reason.RATE_LIMITED,
                f"Request too large: about {rate.cost} prompt tokens, over the {label}. "
                "Shorten the request or ask for a higher limit.",
            )


def _plan(
    account_id: str, key_id: str, key_limits: tuple[int, int, int], account: AccountLimits, tokens: int
) -> _Plan:
    key_rpm, key_tpm, key_slots = key_limits
    requests: list[RateCheck] = []
    token_checks: list[RateCheck] = []
    slots: list[SlotCheck] = []
    labels: dict[str, list[str]] = {"r": [], "t": [], "s": []}
    for owner, ident, rpm, tpm, concurrency in (
        ("key", key_id, key_rpm, key_tpm, key_slots),
        ("account", account_id, account.rpm_limit, account.tpm_limit, account.concurrency_limit),
    ):
        if rpm > 0:
            requests.append(RateCheck(f"{owner}:{ident}:rpm", rpm, 1))
            labels["r"].append(f"{owner} limit of {rpm} requests per minute")
        if tpm > 0:
            token_checks.append(RateCheck(f"{owner}:{ident}:tpm", tpm, tokens))
            labels["t"].append(f"{owner} limit of {tpm} tokens per minute")
        if concurrency > 0:
            slots.append(SlotCheck(f"{owner}:{ident}:slots", concurrency))
            labels["s"].append(f"{owner} limit of {concurrency} concurrent requests")
    return _Plan(tuple(requests), tuple(token_checks), tuple(slots), tuple(labels["r"] + labels["t"] + labels["s"]))


