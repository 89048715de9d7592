"""The pure money rules of a request: output limit, worst-case hold, untrusted usage."""

from gateway_core.config import ModelSettings, Route
from gateway_core.metering.usage import (
    apply_output_limit,
    charge_micros,
    check_usage,
    hold_micros,
    prompt_tokens_to_hold,
)
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2

MODEL = ModelSettings(
    name="m", routes=(Route("p", "m"),), input_price_micros=2_000_000, output_price_micros=5_000_000,
    cached_input_price_micros=1_000_000, max_output_tokens=4096,
)


def test_missing_limit_becomes_the_model_default_on_the_request() -> None:
    request = chat_pb2.StreamChatCompletionRequest(model="m")
    assert apply_output_limit(request, MODEL) == 4096
    assert request.max_completion_tokens == 4096, "the upstream gets exactly what was held for"
    assert not request.HasField("max_tokens")


def test_client_limits_are_kept() -> None:
    legacy = chat_pb2.StreamChatCompletionRequest(model="m", max_tokens=10)
    assert apply_output_limit(legacy, MODEL) == 10 and not legacy.HasField("max_completion_tokens")
    modern = chat_pb2.StreamChatCompletionRequest(model="m", max_tokens=10, max_completion_tokens=20)
    assert apply_output_limit(modern, MODEL) == 20


def test_hold_covers_every_choice_at_its_limit() -> None:
    request = chat_pb2.StreamChatCompletionRequest(model="m", n=8)
    padded = prompt_tokens_to_hold(100)
    assert padded > 100
    assert hold_micros(request, MODEL, prompt_estimate=100, output_limit=4096) == 2 * padded + 5 * 8 * 4096


def test_negative_and_impossible_usage_is_clamped_and_flagged() -> None:
    usage = types_pb2.Usage(prompt_tokens=-1000, completion_tokens=10**12, cached_tokens=5, reasoning_tokens=-3)
    checked = check_usage(usage, max_completion_tokens=100)
    assert (checked.prompt_tokens, checked.completion_tokens, checked.cached_tokens, checked.reasoning_tokens) == (
        0, 100, 0, 0)
    assert checked.clamped


def test_sane_usage_passes_untouched() -> None:
    usage = types_pb2.Usage(prompt_tokens=50, completion_tokens=20, cached_tokens=10, reasoning_tokens=5)
    checked = check_usage(usage, max_completion_tokens=100)
    assert (checked.prompt_tokens, checked.completion_tokens, checked.cached_tokens) == (50, 20, 10)
    assert not checked.clamped and not checked.estimated


def test_charge_uses_cached_price_and_never_exceeds_the_hold() -> None:
    checked = check_usage(types_pb2.Usage(prompt_tokens=50, completion_tokens=20, cached_tokens=10),
                          max_completion_tokens=100)
    assert charge_micros(MODEL, checked, held=10_000) == (40 * 2 + 10 * 1 + 20 * 5, False)
    assert charge_micros(MODEL, checked, held=100) == (100, True)
