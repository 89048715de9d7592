"""Pricing is exact integer arithmetic with one upward rounding."""

import random

import pytest

from gateway_core.metering.pricing import Prices, cost_micros, worst_case_micros


def test_reference_formula_on_random_inputs() -> None:
    rng = random.Random(20261125)
    for _ in range(100_000):
        p_in, p_out = rng.randrange(0, 100_000_000), rng.randrange(0, 100_000_000)
        prompt, completion = rng.randrange(0, 2_000_000), rng.randrange(0, 200_000)
        expected = (p_in * prompt + p_out * completion + 999_999) // 1_000_000
        assert cost_micros(Prices(p_in, p_out), prompt_tokens=prompt, completion_tokens=completion) == expected


def test_test_plan_prices_give_two_prompt_plus_five_completion() -> None:
    prices = Prices(2_000_000, 5_000_000)
    assert cost_micros(prices, prompt_tokens=123, completion_tokens=45) == 2 * 123 + 5 * 45


def test_rounds_up_to_the_next_micro() -> None:
    prices = Prices(150_000, 600_000)  # gpt-4o-mini: $0.15 / $0.60 per 1M
    assert cost_micros(prices, prompt_tokens=1, completion_tokens=0) == 1  # 0.15 micro -> 1
    assert cost_micros(prices, prompt_tokens=0, completion_tokens=0) == 0
    assert cost_micros(prices, prompt_tokens=10, completion_tokens=10) == 8  # 7.5 -> 8


def test_cached_tokens_use_the_cached_price_when_there_is_one() -> None:
    prices = Prices(2_000_000, 5_000_000, cached_input_micros=1_000_000)
    assert cost_micros(prices, prompt_tokens=100, completion_tokens=0, cached_tokens=40) == 60 * 2 + 40 * 1
    no_discount = Prices(2_000_000, 5_000_000)
    assert cost_micros(no_discount, prompt_tokens=100, completion_tokens=0, cached_tokens=40) == 200
    # More cached than prompt (bad upstream data) never makes the cost smaller than all-cached.
    assert cost_micros(prices, prompt_tokens=10, completion_tokens=0, cached_tokens=50) == 10


def test_worst_case_covers_every_choice_at_its_limit() -> None:
    prices = Prices(2_000_000, 5_000_000, cached_input_micros=1)
    assert worst_case_micros(prices, prompt_tokens=10, choices=8, max_output_tokens=4096) == 20 + 5 * 8 * 4096


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        cost_micros(Prices(1, 1), prompt_tokens=-1, completion_tokens=0)
