"""Pure rules that turn a request and an upstream's usage into money: limits, holds, charges.

No I/O here. The hold must cover the worst case, and exactly the output limit
the hold assumed is what goes upstream; upstream usage is untrusted input,
clamped into range and flagged, never credited.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway_core.config import ModelSettings
from gateway_core.metering.pricing import Prices, cost_micros, worst_case_micros
from gateway_core.pb.gateway.v1 import types_pb2
from gateway_core.providers.base import ChatRequest

# No model reads ten million tokens; beyond that an upstream number is garbage.
MAX_PLAUSIBLE_PROMPT_TOKENS = 10_000_000


def prices_of(model: ModelSettings) -> Prices:
    """The model's configured prices."""
    return Prices(model.input_price_micros, model.output_price_micros, model.cached_input_price_micros)


def apply_output_limit(request: ChatRequest, model: ModelSettings) -> int:
    """The output token limit per choice, set on the request when the client gave none,
    so the upstream is held to exactly what the hold assumed."""
    if request.HasField("max_completion_tokens"):
        return request.max_completion_tokens
    if request.HasField("max_tokens"):
        return request.max_tokens
    request.max_completion_tokens = model.max_output_tokens
    return model.max_output_tokens


def prompt_tokens_to_hold(estimate: int) -> int:
    """The estimate plus a margin: estimates run low on some scripts and encodings,
    and a hold that is too small turns the difference into the operator's loss."""
    return estimate + estimate // 4 + 16


def hold_micros(request: ChatRequest, model: ModelSettings, *, prompt_estimate: int, output_limit: int) -> int:
    """Worst-case cost: padded prompt estimate at the input price, every choice at its output limit."""
    choices = request.n if request.HasField("n") else 1
    return worst_case_micros(
        prices_of(model),
        prompt_tokens=prompt_tokens_to_hold(prompt_estimate),
        choices=choices,
        max_output_tokens=output_limit,
    )


@dataclass(frozen=True)
class CheckedUsage:
    """Token counts fit to bill: non-negative, consistent and within what was allowed."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    estimated: bool
    clamped: bool


def check_usage(usage: types_pb2.Usage, *, max_completion_tokens: int) -> CheckedUsage:
    """Clamps an upstream's usage into range; `clamped` says whether anything moved."""
    # _clamp, not min(max(...)): the builtins cost ~8x a comparison, and this runs before each answer.
    prompt = _clamp(usage.prompt_tokens, MAX_PLAUSIBLE_PROMPT_TOKENS)
    completion = _clamp(usage.completion_tokens, max_completion_tokens)
    cached = _clamp(usage.cached_tokens, prompt)
    reasoning = _clamp(usage.reasoning_tokens, completion)
    clamped = (prompt, completion, cached, reasoning) != (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.reasoning_tokens,
    )
    return CheckedUsage(prompt, completion, cached, reasoning, usage.estimated, clamped)


def _clamp(count: int, most: int) -> int:
    """min(max(count, 0), most), the same for every int."""
    count = count if count > 0 else 0
    return most if most < count else count


def charge_micros(model: ModelSettings, usage: CheckedUsage, *, held: int) -> tuple[int, bool]:
    """The cost of checked usage, capped at the hold; the flag says whether the cap bit."""
    cost = cost_micros(
        prices_of(model),
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
    )
    return (held if held < cost else cost), cost > held  # min(cost, held) without the builtin's cost
