"""A flooding tenant, run as its own process so its CPU is not the gateway's.

Usage: python -m tests.e2e.flood_client URL KEY SECONDS CONCURRENCY
Sends chat requests as fast as CONCURRENCY connections allow for SECONDS, then
prints a JSON object counting the statuses it got (0: the connection broke
without an answer, counted rather than crashing so the test can bound it).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

import httpx

# Alternating: a well-formed request the account cannot pay for, and bad input.
BODIES = [
    json.dumps({"model": "m", "messages": [{"role": "user", "content": "flood"}]}).encode(),
    b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
]


async def flood(url: str, key: str, seconds: float, concurrency: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30,
                                 headers={"Authorization": f"Bearer {key}"}) as client:

        async def worker(n: int) -> None:
            while time.monotonic() < deadline:
                try:
                    response = await client.post("/v1/chat/completions", content=BODIES[n % len(BODIES)])
                except httpx.TransportError:
                    statuses[0] += 1
                else:
                    statuses[response.status_code] += 1
                n += 1

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return statuses


def main() -> None:
    url, key, seconds, concurrency = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    statuses = asyncio.run(flood(url, key, seconds, concurrency))
    print(json.dumps({str(status): count for status, count in statuses.items()}))


if __name__ == "__main__":
    main()
