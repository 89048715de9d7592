"""The comparisons that stand in for min()/max() on the request path give the builtins' answers."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from gateway_core.metering import usage
from gateway_core.metering.pricing import Prices, cost_micros
from gateway_core.observability import request_record

INTS = st.integers(min_value=-(2**70), max_value=2**70)
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e-300, -1e-300])


def _same(a: object, b: object) -> bool:
    """Equal, of one type, and the same float (nan is nan, -0.0 is not 0.0)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return type(a) is type(b) and a == b


@given(INTS, INTS)
def test_clamp_is_min_of_max(count: int, most: int) -> None:
    assert _same(usage._clamp(count, most), min(max(count, 0), most))


@given(INTS)
def test_not_below_zero_is_max_for_ints(value: int) -> None:
    assert _same(request_record._not_below_zero(value, 0), max(value, 0))


@given(FLOATS)
def test_not_below_zero_is_max_for_floats(value: float) -> None:
    assert _same(request_record._not_below_zero(value, 0.0), max(value, 0.0))


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 2 * 10**9))
def test_cost_caps_cached_tokens_at_the_prompt(prompt: int, completion: int, cached: int) -> None:
    prices = Prices(input_micros=3_000_000, output_micros=15_000_000, cached_input_micros=300_000)
    capped = min(cached, prompt)
    assert cost_micros(prices, prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached) == cost_micros(
        prices, prompt_tokens=prompt, completion_tokens=completion, cached_tokens=capped
    )
