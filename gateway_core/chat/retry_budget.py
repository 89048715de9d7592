"""The process-wide retry budget: retries stay a bounded fraction of requests.

When every upstream is failing, retrying each request `max_attempts` times
multiplies the load on upstreams that are already down (a retry storm). Like
gRPC's retry throttling and Envoy's retry budgets, a token bucket bounds it:
every request deposits `ratio` tokens (up to `burst`), every retry withdraws
one, and a retry without a whole token is not made. Over any stretch of time,
retries <= ratio x requests + burst.

One per core; asyncio single-threaded, so no locks.
"""

from __future__ import annotations


class RetryBudget:
    """A token bucket of retries; starts full so a quiet process can still retry."""

    def __init__(self, ratio: float, burst: int) -> None:
        self._ratio = ratio
        self._burst = float(burst)
        self._tokens = float(burst)

    @property
    def tokens(self) -> float:
        return self._tokens

    def on_request(self) -> None:
        """A new request arrived: it earns the process a fraction of a retry."""
        tokens = self._tokens + self._ratio
        self._tokens = self._burst if self._burst < tokens else tokens  # min() without the builtin's cost

    def try_retry(self) -> bool:
        """Takes one retry from the budget; False (and nothing taken) when it is spent."""
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
