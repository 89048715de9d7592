"""Limits counted in Redis, shared by every replica: atomic Lua scripts, Redis's own clock.

Each admit is one script run, so concurrent replicas cannot both pass a check.
Time comes from Redis (TIME) so replicas with skewed clocks agree. Concurrency
slots are leases in a sorted set scored by expiry: a replica that crashes
without releasing loses its slots after `lease_seconds`, never forever.
Short connect and command timeouts turn a dead Redis into LimiterUnavailable
quickly; after a failure Redis is not asked again for `retry_after_failure`
seconds, so a dead Redis costs at most one timeout per second, not one per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway_core.limits.base import PERIOD_SECONDS, LimiterUnavailable, RateCheck, RateState, SlotCheck, Verdict

KEY_PREFIX = "tollgate:limits:"

# KEYS: the rate counters, then the slot sets.
# ARGV: n_rates, lease_id, lease_ms, period_ms, then limit and cost per rate, then limit per slot.
# Returns {allowed, refused index or -1, retry_ms, remaining_1, reset_ms_1, ...}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local lease_id = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local period = tonumber(ARGV[4])
local tats = {}
local new_tats = {}
local refused = -1
local retry = 0
for i = 1, n do
  local limit = tonumber(ARGV[3 + 2 * i])
  local cost = tonumber(ARGV[4 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  local new_tat = tat + cost * period / limit
  new_tats[i] = new_tat
  local wait = new_tat - period - now
  if refused < 0 and wait > 0 then refused = i - 1; retry = wait end
end
if refused < 0 then
  for j = n + 1, #KEYS do
    local limit = tonumber(ARGV[4 + 2 * n + (j - n)])
    redis.call('ZREMRANGEBYSCORE', KEYS[j], '-inf', now)
    if redis.call('ZCARD', KEYS[j]) >= limit then refused = j - 1; retry = 1000; break end
  end
end
local out = {refused < 0 and 1 or 0, refused, math.ceil(retry)}
for i = 1, n do
  local limit = tonumber(ARGV[3 + 2 * i])
  local tat = tats[i]
  if refused < 0 then
    tat = new_tats[i]
    redis.call('SET', KEYS[i], tostring(tat), 'PX', math.ceil(tat - now) + 1000)
  end
  local used = tat - now
  if used < 0 then used = 0 end
  local remaining = math.floor((period - used) / (period / limit) + 0.000001)
  if remaining < 0 then remaining = 0 end
  if remaining > limit then remaining = limit end
  table.insert(out, remaining)
  table.insert(out, math.ceil(used))
end
if refused < 0 then
  for j = n + 1, #KEYS do
    redis.call('ZADD', KEYS[j], now + lease_ms, lease_id)
    redis.call('PEXPIRE', KEYS[j], lease_ms)
  end
end
return out
"""

# KEYS[1]: a rate counter. ARGV: limit, cost (may be negative), period_ms. Never refuses.
_CORRECT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
tat = tat + tonumber(ARGV[2]) * period / limit
if tat <= now then redis.call('DEL', KEYS[1]); return 0 end
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now) + 1000)
return 1
"""


class RedisLimiter:
    """Counters in one Redis, shared by every replica using the same URL."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_seconds: float,
        command_timeout_seconds: float,
        lease_seconds: float,
        retry_after_failure_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout_seconds,
            socket_timeout=command_timeout_seconds,
            # No retries: one bounded try per check, then the failure policy decides.
            retry=Retry(NoBackoff(), 0),
        )
        self._timeout = connect_timeout_seconds + command_timeout_seconds
        self._lease_ms = int(lease_seconds * 1000)
        self._retry_after_failure = retry_after_failure_seconds
        self._clock = clock
        self._down_until = 0.0
        self._admit = self._client.register_script(_ADMIT)
        self._correct = self._client.register_script(_CORRECT)

    async def admit(self, rates: Sequence[RateCheck], slots: Sequence[SlotCheck], lease_id: str) -> Verdict:
        keys = [KEY_PREFIX + r.key for r in rates] + [KEY_PREFIX + s.key for s in slots]
        args: list[Any] = [len(rates), lease_id, self._lease_ms, int(PERIOD_SECONDS * 1000)]
        for rate in rates:
            args += [rate.limit, rate.cost]
        args += [slot.limit for slot in slots]
        reply = await self._call(self._admit(keys=keys, args=args))
        values = [int(v) for v in reply]
        states = tuple(
            RateState(limit=rate.limit, remaining=values[3 + 2 * i], reset_seconds=values[4 + 2 * i] / 1000)
            for i, rate in enumerate(rates)
        )
        return Verdict(values[0] == 1, values[1], values[2] / 1000, states)

    async def correct(self, rate: RateCheck) -> None:
        await self._call(
            self._correct(keys=[KEY_PREFIX + rate.key], args=[rate.limit, rate.cost, int(PERIOD_SECONDS * 1000)])
        )

    async def release(self, slot_keys: Sequence[str], lease_id: str) -> None:
        if not slot_keys:
            return
        pipe = self._client.pipeline(transaction=False)
        for key in slot_keys:
            pipe.zrem(KEY_PREFIX + key, lease_id)
        await self._call(pipe.execute())

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, command: Any) -> Any:
        if self._clock() < self._down_until:
            command.close()  # the coroutine is never awaited: Redis was just found down
            raise LimiterUnavailable("redis was unreachable moments ago")
        try:
            return await asyncio.wait_for(command, self._timeout)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._down_until = self._clock() + self._retry_after_failure
            raise LimiterUnavailable(f"redis: {type(exc).__name__}") from None
