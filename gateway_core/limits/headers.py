"""OpenAI's x-ratelimit-* headers from counter states.

OpenAI sends, per dimension (requests, tokens): x-ratelimit-limit-<d> (the
per-minute limit), x-ratelimit-remaining-<d>, and x-ratelimit-reset-<d>, the
time until the counter is full again as a Go-style duration ("12ms", "1s",
"6m0s"). When both the key and its account limit a dimension, the tighter
one (least remaining) is reported.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway_core.limits.base import RateState

HEADER_PREFIX = "x-ratelimit-"


def duration(seconds: float) -> str:
    """A Go-style duration as OpenAI writes it: 12ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{max(int(seconds * 1000 + 0.999), 0)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def rate_headers(dimension: str, states: Sequence[RateState]) -> list[tuple[str, str]]:
    """The three headers of one dimension ("requests" or "tokens"); none if nothing limits it."""
    if not states:
        return []
    tightest = min(states, key=lambda s: (s.remaining, -s.reset_seconds))
    return [
        (f"{HEADER_PREFIX}limit-{dimension}", str(tightest.limit)),
        (f"{HEADER_PREFIX}remaining-{dimension}", str(tightest.remaining)),
        (f"{HEADER_PREFIX}reset-{dimension}", duration(tightest.reset_seconds)),
    ]
