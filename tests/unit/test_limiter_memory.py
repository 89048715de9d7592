"""The in-process limiter (GCRA rates, concurrency slots), header formatting and the enforcer's answers."""

from __future__ import annotations

import pytest

from gateway_core.errors import GatewayError, Reason
from gateway_core.limits.accounts import AccountLimits, AccountLimitsCache
from gateway_core.limits.base import LimiterUnavailable, RateCheck, SlotCheck, Verdict
from gateway_core.limits.enforcer import FAIL_CLOSED, FAIL_OPEN, LimitEnforcer
from gateway_core.limits.headers import duration, rate_headers
from gateway_core.limits.base import RateState
from gateway_core.limits.memory import MemoryLimiter
from gateway_core.metrics import LIMIT_STORE_FAILURES


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_rpm_admits_the_limit_at_once_then_refuses_with_the_wait() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    rpm = RateCheck("k:rpm", 6, 1)  # one request per 10 s, bursts of 6
    for expected_remaining in (5, 4, 3, 2, 1, 0):
        verdict = await limiter.admit([rpm], [], "r")
        assert verdict.allowed and verdict.rates[0].remaining == expected_remaining
    refused = await limiter.admit([rpm], [], "r")
    assert not refused.allowed and refused.refused == 0
    assert refused.retry_after_seconds == pytest.approx(10.0)
    clock.now += 9.9
    assert not (await limiter.admit([rpm], [], "r")).allowed
    clock.now += 0.1
    assert (await limiter.admit([rpm], [], "r")).allowed


async def test_a_refusal_spends_nothing_on_any_counter() -> None:
    limiter = MemoryLimiter(Clock())
    rpm, tpm = RateCheck("k:rpm", 100, 1), RateCheck("k:tpm", 1000, 800)
    assert (await limiter.admit([rpm, tpm], [], "a")).allowed
    refused = await limiter.admit([rpm, tpm], [], "b")
    assert not refused.allowed and refused.refused == 1  # the token check
    after = await limiter.admit([rpm], [], "c")
    assert after.rates[0].remaining == 98  # a's and c's requests only, not b's


async def test_token_correction_gives_back_what_the_estimate_overcounted() -> None:
    limiter = MemoryLimiter(Clock())
    assert (await limiter.admit([RateCheck("t", 1000, 900)], [], "a")).allowed
    assert not (await limiter.admit([RateCheck("t", 1000, 200)], [], "b")).allowed
    await limiter.correct(RateCheck("t", 1000, -500))  # real usage was 400
    verdict = await limiter.admit([RateCheck("t", 1000, 200)], [], "b")
    assert verdict.allowed and verdict.rates[0].remaining == 400


async def test_slots_are_taken_per_lease_and_released_once() -> None:
    limiter = MemoryLimiter(Clock())
    slot = SlotCheck("k:slots", 2)
    assert (await limiter.admit([], [slot], "a")).allowed
    assert (await limiter.admit([], [slot], "b")).allowed
    refused = await limiter.admit([], [slot], "c")
    assert not refused.allowed and refused.refused == 0 and refused.retry_after_seconds > 0
    await limiter.release(["k:slots"], "a")
    await limiter.release(["k:slots"], "a")  # twice is harmless: b still holds its slot
    assert limiter.in_flight("k:slots") == 1
    assert (await limiter.admit([], [slot], "c")).allowed
    assert not (await limiter.admit([], [slot], "d")).allowed


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0ms"), (0.0121, "13ms"), (0.999, "999ms"), (1, "1s"), (1.5, "1.5s"), (59.25, "59.25s"), (360, "6m0s"),
     (61.5, "1m1.5s")],
)
def test_durations_are_written_like_openai(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_headers_report_the_tighter_of_key_and_account() -> None:
    headers = dict(rate_headers("requests", [RateState(60, 59, 1.0), RateState(10, 2, 48.0)]))
    assert headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "48s",
    }
    assert rate_headers("tokens", []) == []


class _Accounts:
    def __init__(self, limits: AccountLimits) -> None:
        self.limits = limits
        self.reads = 0

    async def get_account(self, account_id: str) -> object:
        self.reads += 1
        limits = self.limits

        class Record:
            rpm_limit = limits.rpm_limit
            tpm_limit = limits.tpm_limit
            concurrency_limit = limits.concurrency_limit

        return Record()


class _DeadLimiter(MemoryLimiter):
    async def admit(self, rates: object, slots: object, lease_id: str) -> Verdict:  # type: ignore[override]
        raise LimiterUnavailable("down")


def _enforcer(limiter: MemoryLimiter, accounts: _Accounts, policy: str = FAIL_OPEN) -> LimitEnforcer:
    return LimitEnforcer(limiter, AccountLimitsCache(accounts, 60.0), policy)  # type: ignore[arg-type]


async def test_account_limit_covers_all_its_keys_and_says_which_limit() -> None:
    enforcer = _enforcer(MemoryLimiter(Clock()), _Accounts(AccountLimits(rpm_limit=2)))
    for key in ("key1", "key2"):
        lease = await enforcer.admit(account_id="a", key_id=key, key_limits=(0, 0, 0), request_id=key, token_estimate=5)
        assert dict(lease.headers)["x-ratelimit-limit-requests"] == "2"
    with pytest.raises(GatewayError) as caught:
        await enforcer.admit(account_id="a", key_id="key3", key_limits=(0, 0, 0), request_id="r3", token_estimate=5)
    error = caught.value
    assert error.reason == Reason.RATE_LIMITED and "account limit of 2 requests per minute" in error.message
    assert error.retry_after_seconds == pytest.approx(30.0)
    assert dict(error.headers)["x-ratelimit-remaining-requests"] == "0"


async def test_no_limits_means_no_counters_and_no_headers() -> None:
    limiter = MemoryLimiter(Clock())
    lease = await _enforcer(limiter, _Accounts(AccountLimits())).admit(
        account_id="a", key_id="k", key_limits=(0, 0, 0), request_id="r", token_estimate=5
    )
    assert lease.limiter is None and lease.headers == ()


async def test_finish_releases_slots_and_corrects_tokens_once() -> None:
    limiter = MemoryLimiter(Clock())
    enforcer = _enforcer(limiter, _Accounts(AccountLimits()))
    lease = await enforcer.admit(account_id="a", key_id="k", key_limits=(0, 1000, 1), request_id="r", token_estimate=300)
    assert dict(lease.headers)["x-ratelimit-remaining-tokens"] == "700"
    assert limiter.in_flight("key:k:slots") == 1
    await lease.finish(100)
    await lease.finish(100)
    assert limiter.in_flight("key:k:slots") == 0
    after = await enforcer.admit(account_id="a", key_id="k", key_limits=(0, 1000, 1), request_id="s", token_estimate=1)
    assert dict(after.headers)["x-ratelimit-remaining-tokens"] == "899"  # 100 real + 1, not 300 + 1


async def test_limiter_down_fail_open_admits_and_fail_closed_refuses() -> None:
    accounts = _Accounts(AccountLimits(rpm_limit=1))
    failures = LIMIT_STORE_FAILURES.labels(policy="open")
    before = failures._value.get()
    lease = await _enforcer(_DeadLimiter(), accounts, FAIL_OPEN).admit(
        account_id="a", key_id="k", key_limits=(0, 0, 0), request_id="r", token_estimate=1
    )
    assert lease.limiter is None and failures._value.get() == before + 1
    with pytest.raises(GatewayError) as caught:
        await _enforcer(_DeadLimiter(), accounts, FAIL_CLOSED).admit(
            account_id="a", key_id="k", key_limits=(0, 0, 0), request_id="r", token_estimate=1
        )
    assert caught.value.reason == Reason.LIMITS_UNAVAILABLE and caught.value.retry_after_seconds == 1.0


async def test_account_limits_are_cached_within_the_bound() -> None:
    clock = Clock()
    accounts = _Accounts(AccountLimits(rpm_limit=5))
    cache = AccountLimitsCache(accounts, 2.0, clock)  # type: ignore[arg-type]
    assert (await cache.get("a")).rpm_limit == 5
    accounts.limits = AccountLimits(rpm_limit=7)
    clock.now += 1.9
    assert (await cache.get("a")).rpm_limit == 5 and accounts.reads == 1
    clock.now += 0.2
    assert (await cache.get("a")).rpm_limit == 7 and accounts.reads == 2


async def test_a_prompt_over_a_whole_minute_of_tokens_is_refused_without_a_retry_hint() -> None:
    limiter = MemoryLimiter(Clock())
    enforcer = _enforcer(limiter, _Accounts(AccountLimits(tpm_limit=500)))
    with pytest.raises(GatewayError) as caught:
        await enforcer.admit(account_id="a", key_id="k", key_limits=(10, 0, 1), request_id="r", token_estimate=501)
    assert caught.value.reason == Reason.RATE_LIMITED and caught.value.retry_after_seconds is None
    assert "Request too large" in caught.value.message and "account limit of 500 tokens" in caught.value.message
    assert limiter.in_flight("key:k:slots") == 0  # nothing was spent
    lease = await enforcer.admit(account_id="a", key_id="k", key_limits=(10, 0, 1), request_id="s", token_estimate=500)
    assert dict(lease.headers)["x-ratelimit-remaining-requests"] == "9"
