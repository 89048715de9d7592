"""RequestMeter on a whole (unary) response: the upstream's usage when reported, else an estimate
from the answer's text, which is gathered only then."""

from __future__ import annotations

from types import SimpleNamespace

from gateway_core.chat.meter import Admission, RequestMeter, billed_usage, set_billed_usage
from gateway_core.config import ModelSettings, Route
from gateway_core.metering.outcome import Hold, UsageStatus
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import UpstreamCall
from gateway_core.tokens import estimate_text_tokens

ANSWER = "The answer, in a handful of plain words."


def _meter() -> RequestMeter:
    model = ModelSettings(name="m", routes=(Route(provider="p", model="u"),), input_price_micros=1_000_000,
                          output_price_micros=2_000_000)
    call = UpstreamCall(request=chat_pb2.CreateChatCompletionRequest(model="m"), upstream_model="u",
                        client_model="m", request_id="r")
    admission = Admission(model=model, provider=SimpleNamespace(name="p"), call=call,  # type: ignore[arg-type]
                          hold=Hold("r", "a", "k", 1_000_000), prompt_estimate=7, max_completion_tokens=100,
                          started=0.0)
    return RequestMeter(admission)


def _response(*contents: str, usage: types_pb2.Usage | None = None) -> chat_pb2.CreateChatCompletionResponse:
    response = chat_pb2.CreateChatCompletionResponse(id="c", model="m")
    for content in contents:
        response.choices.add().message.content = content
    if usage is not None:
        response.usage.CopyFrom(usage)
    return response


def test_reported_usage_is_billed_as_reported() -> None:
    meter = _meter()
    meter.observe_response(_response(ANSWER, usage=types_pb2.Usage(prompt_tokens=11, completion_tokens=13)))
    outcome = meter.outcome(UsageStatus.OK)
    assert (outcome.prompt_tokens, outcome.completion_tokens, outcome.estimated) == (11, 13, False)


def test_without_usage_the_answers_text_is_estimated() -> None:
    meter = _meter()
    meter.observe_response(_response(ANSWER, "and a second choice"))
    outcome = meter.outcome(UsageStatus.OK)
    assert outcome.estimated and outcome.prompt_tokens == 7
    assert outcome.completion_tokens == estimate_text_tokens(ANSWER + "and a second choice") > 0


def test_a_choice_with_empty_text_still_counts_as_output_of_a_failed_request() -> None:
    meter = _meter()
    assert not meter.produced_output
    meter.observe_response(_response(""))
    assert meter.produced_output
    # A failure after output is billed for what was seen (here: the prompt estimate, no completion).
    outcome = meter.outcome(UsageStatus.UPSTREAM_ERROR)
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (7, 0)


def test_billed_usage_set_in_place_replaces_the_upstreams_numbers_whole() -> None:
    meter = _meter()
    upstream = types_pb2.Usage(prompt_tokens=11, completion_tokens=13, total_tokens=99, cached_tokens=5,
                               reasoning_tokens=4)
    response = _response(ANSWER, usage=upstream)
    meter.observe_response(response)
    outcome = meter.outcome(UsageStatus.OK)
    expected = billed_usage(outcome, 42)
    set_billed_usage(response.usage, outcome, 42)  # what the unary pipeline does to the answer it returns
    assert response.usage == expected
    assert (response.usage.total_tokens, response.usage.cost_micros, response.usage.estimated) == (24, 42, False)
