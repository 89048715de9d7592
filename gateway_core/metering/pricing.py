"""What tokens cost: pure integer arithmetic, one rounding, always up.

Prices are integer micro-USD per 1M tokens; costs are integer micro-USD.
cost = ceil((uncached_in * p_in + cached_in * p_cached + out * p_out) / 1e6).
No float and no Decimal ever touches these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

TOKENS_PER_PRICE_UNIT = 1_000_000


@dataclass(frozen=True)
class Prices:
    """A model's prices in micro-USD per 1M tokens."""

    input_micros: int
    output_micros: int
    # None: the provider gives no cache discount; cached tokens cost the input price.
    cached_input_micros: int | None = None


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def cost_micros(prices: Prices, *, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> int:
    """The cost of one request. cached_tokens is the part of prompt_tokens served from cache."""
    if prompt_tokens < 0 or completion_tokens < 0 or cached_tokens < 0:
        raise ValueError("token counts must not be negative")
    cached = prompt_tokens if prompt_tokens < cached_tokens else cached_tokens  # min(), minus the builtin's cost
    cached_price = prices.input_micros if prices.cached_input_micros is None else prices.cached_input_micros
    numerator = (
        (prompt_tokens - cached) * prices.input_micros
        + cached * cached_price
        + completion_tokens * prices.output_micros
    )
    return _ceil_div(numerator, TOKENS_PER_PRICE_UNIT)


def worst_case_micros(prices: Prices, *, prompt_tokens: int, choices: int, max_output_tokens: int) -> int:
    """The most a request can cost: every prompt token uncached, every choice at its output limit."""
    return cost_micros(prices, prompt_tokens=prompt_tokens, completion_tokens=choices * max_output_tokens)
