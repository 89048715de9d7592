"""The Redis limiter against a real redis-server: same answers as in process, shared, leased, bounded when down."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway_core.limits.base import LimiterUnavailable, RateCheck, SlotCheck
from gateway_core.limits.redis_limiter import RedisLimiter
from tests.process_support import free_port
from tests.redis_support import RedisServer, running_redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def _limiter(url: str, lease_seconds: float = 60.0, timeout: float = 0.25) -> RedisLimiter:
    return RedisLimiter(url, connect_timeout_seconds=timeout, command_timeout_seconds=timeout, lease_seconds=lease_seconds)


@pytest.fixture
async def limiter(redis_server: RedisServer) -> AsyncIterator[RedisLimiter]:
    limiter = _limiter(redis_server.url)
    yield limiter
    await limiter.close()


def _unique(name: str) -> str:
    return f"{name}:{time.monotonic_ns()}"


async def test_rpm_burst_then_refusal_with_the_wait(limiter: RedisLimiter) -> None:
    rpm = RateCheck(_unique("rpm"), 6, 1)
    remaining = [(await limiter.admit([rpm], [], "r")).rates[0].remaining for _ in range(6)]
    assert remaining == [5, 4, 3, 2, 1, 0]
    refused = await limiter.admit([rpm], [], "r")
    assert not refused.allowed and refused.refused == 0
    assert 9.0 < refused.retry_after_seconds <= 10.0


async def test_refusal_spends_nothing_and_correction_gives_tokens_back(limiter: RedisLimiter) -> None:
    rpm, tpm = RateCheck(_unique("rpm"), 100, 1), RateCheck(_unique("tpm"), 1000, 900)
    assert (await limiter.admit([rpm, tpm], [], "a")).allowed
    refused = await limiter.admit([rpm, RateCheck(tpm.key, 1000, 200)], [], "b")
    assert not refused.allowed and refused.refused == 1
    await limiter.correct(RateCheck(tpm.key, 1000, -500))
    verdict = await limiter.admit([rpm, RateCheck(tpm.key, 1000, 200)], [], "b")
    assert verdict.allowed
    assert verdict.rates[0].remaining == 98  # a and b: the refused try spent no request
    assert 398 <= verdict.rates[1].remaining <= 400


async def test_two_clients_share_one_counter(redis_server: RedisServer) -> None:
    first, second = _limiter(redis_server.url), _limiter(redis_server.url)
    rpm = RateCheck(_unique("shared"), 4, 1)
    try:
        results = await asyncio.gather(*[(first if i % 2 else second).admit([rpm], [], f"r{i}") for i in range(10)])
        assert sum(v.allowed for v in results) == 4
    finally:
        await first.close()
        await second.close()


async def test_slots_release_and_expire_when_their_holder_dies(redis_server: RedisServer) -> None:
    limiter = _limiter(redis_server.url, lease_seconds=0.5)
    slot = SlotCheck(_unique("slots"), 2)
    try:
        assert (await limiter.admit([], [slot], "a")).allowed
        assert (await limiter.admit([], [slot], "b")).allowed
        assert not (await limiter.admit([], [slot], "c")).allowed
        await limiter.release([slot.key], "a")
        assert (await limiter.admit([], [slot], "c")).allowed
        # Nobody releases b or c (their replica "crashed"): the leases run out.
        await asyncio.sleep(0.6)
        assert (await limiter.admit([], [slot], "d")).allowed
        assert (await limiter.admit([], [slot], "e")).allowed
    finally:
        await limiter.close()


async def test_nothing_listening_fails_fast_and_then_skips_redis() -> None:
    limiter = _limiter(f"redis://127.0.0.1:{free_port()}/0")
    try:
        started = time.monotonic()
        with pytest.raises(LimiterUnavailable):
            await limiter.admit([RateCheck("x", 1, 1)], [], "r")
        with pytest.raises(LimiterUnavailable):  # within a second of a failure Redis is not asked
            await limiter.admit([RateCheck("x", 1, 1)], [], "r")
        assert time.monotonic() - started < 1.0
    finally:
        await limiter.close()


async def test_a_silent_redis_is_cut_off_by_the_timeout(tmp_path: Path) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        limiter = _limiter(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", timeout=0.2)
        started = time.monotonic()
        with pytest.raises(LimiterUnavailable):
            await limiter.admit([RateCheck("x", 1, 1)], [], "r")
        assert time.monotonic() - started < 1.0
        await limiter.close()
    finally:
        silent.close()
