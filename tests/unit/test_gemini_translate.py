"""The Gemini translator against wire fixtures in Gemini's format (tests/fixtures/gemini/)."""

from __future__ import annotations

import ast
import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway_core.errors import GatewayError, Reason
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import ProviderError
from gateway_core.providers.gemini import translate
from tests.providers_support import as_dict, as_dicts, call_for, fixture_events, fixture_json, user_request

PROVIDER = "gemini-test"
CREATED = 1_760_000_000
# A thought signature as Gemini sends it (standard base64 of opaque bytes).
SIGNATURE = "CiwBjz1rX5Kd0mC8Zb3Yq1rQpW7hO2g4t9n+0L5c8VvYy1aQ2v3W/8Jx+Q=="
SIGNED_ID = translate.new_call_id(SIGNATURE)
WEATHER_SCHEMA = (
    '{"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, '
    '"maximum": 18446744073709551616}, "units": {"anyOf": [{"type": "string"}, {"type": "null"}]}}, '
    '"required": ["city"], "additionalProperties": false}'
)


def wire(body: dict[str, Any]) -> Any:
    """What the gateway would put on the wire, parsed back (exact integers)."""
    return json.loads(orjson.dumps(body))


def full_request() -> chat_pb2.CreateChatCompletionRequest:
    """The gateway request behind chat_full.request.json: every mapping row at least once."""
    r = chat_pb2.CreateChatCompletionRequest(model="client-model")
    r.messages.add(role=types_pb2.ROLE_SYSTEM, content="Be terse.")
    r.messages.add(role=types_pb2.ROLE_USER, name="alice", parts=[
        chat_pb2.ContentPart(text="What is in these images?"),
        chat_pb2.ContentPart(image_url=chat_pb2.ImageUrl(url="data:image/png;base64,iVBORw0KGgo=", detail="low")),
        chat_pb2.ContentPart(image_url=chat_pb2.ImageUrl(url="https://example.com/photos/cat.WEBP?size=large")),
        chat_pb2.ContentPart(image_url=chat_pb2.ImageUrl(url="https://example.com/render?id=7")),
        chat_pb2.ContentPart(input_audio=chat_pb2.InputAudio(data="UklGRg==", format="wav")),
        chat_pb2.ContentPart(file=chat_pb2.FileInput(file_data="data:application/pdf;base64,JVBERi0=",
                                                     filename="a.pdf")),
        chat_pb2.ContentPart(text=""),
    ])
    r.messages.add(role=types_pb2.ROLE_DEVELOPER, parts=[chat_pb2.ContentPart(text="Answer about weather.")])
    r.messages.add(role=types_pb2.ROLE_USER, content="And the weather in Paris?")
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, content="Checking.", tool_calls=[
        chat_pb2.ToolCall(id=SIGNED_ID, type="function", function=chat_pb2.FunctionCall(
            name="get_weather", arguments='{"city": "Paris", "days": 12345678901234567890}')),
        chat_pb2.ToolCall(id="call_plainOpenAIStyleId", type="function",
                          function=chat_pb2.FunctionCall(name="get_time", arguments="")),
    ], extra_json='{"reasoning_content": "thoughts are not sent back"}')
    r.messages.add(role=types_pb2.ROLE_TOOL, tool_call_id=SIGNED_ID, content='{"temp_c": 21, "sky": "clear"}')
    r.messages.add(role=types_pb2.ROLE_TOOL, tool_call_id="call_plainOpenAIStyleId",
                   parts=[chat_pb2.ContentPart(text="12:00"), chat_pb2.ContentPart(text=" CET")])
    r.messages.add(role=types_pb2.ROLE_USER, content="Thanks! Anything else?")
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, content=None, refusal="I can't help with that.")
    r.messages.add(role=types_pb2.ROLE_USER, content="ok")
    r.temperature, r.top_p, r.max_tokens, r.max_completion_tokens, r.n, r.seed = 0.2, 0.9, 999, 256, 2, 42
    r.parallel_tool_calls, r.frequency_penalty, r.presence_penalty = False, -0.5, 0.25
    r.logprobs, r.top_logprobs = True, 3
    r.stop.extend(["\n\n", "END"])
    r.user = "user-1234"
    r.tools.add(type="function", function=chat_pb2.FunctionDefinition(
        name="get_weather", description="Weather for a city", strict=True, parameters_json=WEATHER_SCHEMA))
    r.tools.add(type="function", function=chat_pb2.FunctionDefinition(name="get_time"))
    r.tool_choice.mode, r.tool_choice.function_name = chat_pb2.TOOL_CHOICE_MODE_FUNCTION, "get_weather"
    r.response_format.type = chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    r.response_format.json_schema.CopyFrom(chat_pb2.JsonSchemaFormat(
        name="weather", description="A forecast", strict=True,
        schema_json='{"type": "object", "properties": {"temp_c": {"type": "number"}}, "required": ["temp_c"]}'))
    r.logit_bias_json = "{}"
    r.reasoning_effort = "low"
    r.metadata.update({"team": "search"})
    r.extra_json = json.dumps({"store": True, "contents": [], "safetySettings": []})
    return r


def to_request(request: chat_pb2.CreateChatCompletionRequest | chat_pb2.StreamChatCompletionRequest,
               model: str = "gemini-3-flash-preview") -> Any:
    return wire(translate.to_request(call_for(request, model)))


def test_to_request_full_matches_recorded() -> None:
    assert to_request(full_request(), "gemini-2.5-flash") == fixture_json("gemini", "chat_full.request.json")


def test_to_request_sends_only_what_the_client_set() -> None:
    assert to_request(user_request()) == {"contents": [{"role": "user", "parts": [{"text": "Hello there, gateway!"}]}]}


def test_stream_and_unary_requests_have_the_same_body() -> None:
    assert to_request(user_request(stream=True, temperature=1.0)) == to_request(user_request(temperature=1.0))


@pytest.mark.parametrize(("mode", "name", "expected"), [
    (chat_pb2.TOOL_CHOICE_MODE_AUTO, "", {"mode": "AUTO"}),
    (chat_pb2.TOOL_CHOICE_MODE_NONE, "", {"mode": "NONE"}),
    (chat_pb2.TOOL_CHOICE_MODE_REQUIRED, "", {"mode": "ANY"}),
    (chat_pb2.TOOL_CHOICE_MODE_FUNCTION, "get_time", {"mode": "ANY", "allowedFunctionNames": ["get_time"]}),
])
def test_tool_choice_modes(mode: int, name: str, expected: dict[str, Any]) -> None:
    request = user_request(tool_choice=chat_pb2.ToolChoice(mode=mode, function_name=name))  # type: ignore[arg-type]
    assert to_request(request)["toolConfig"] == {"functionCallingConfig": expected}


@pytest.mark.parametrize(("kind", "expected"), [
    (chat_pb2.RESPONSE_FORMAT_TYPE_TEXT, None),
    (chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT, {"responseMimeType": "application/json"}),
])
def test_response_formats(kind: int, expected: dict[str, Any] | None) -> None:
    request = user_request(response_format=chat_pb2.ResponseFormat(type=kind))  # type: ignore[arg-type]
    assert to_request(request).get("generationConfig") == expected


@pytest.mark.parametrize(("model", "effort", "expected"), [
    ("gemini-3-pro-preview", "high", {"thinkingLevel": "HIGH", "includeThoughts": True}),
    ("gemini-3-flash-preview", "medium", {"thinkingLevel": "MEDIUM", "includeThoughts": True}),
    ("gemini-flash-latest", "minimal", {"thinkingLevel": "MINIMAL", "includeThoughts": True}),
    ("gemini-3-flash-preview", "none", {"thinkingLevel": "MINIMAL"}),
    ("gemini-2.5-flash", "low", {"thinkingBudget": 1024, "includeThoughts": True}),
    ("models/gemini-2.5-pro", "high", {"thinkingBudget": 24576, "includeThoughts": True}),
    ("gemini-2.0-flash-thinking-exp", "medium", {"thinkingBudget": 8192, "includeThoughts": True}),
    ("gemini-2.5-flash-lite", "none", {"thinkingBudget": 0}),
])
def test_reasoning_effort_to_thinking_config(model: str, effort: str, expected: dict[str, Any]) -> None:
    body = to_request(user_request(reasoning_effort=effort), model)
    assert body["generationConfig"] == {"thinkingConfig": expected}


def test_max_tokens_is_used_without_max_completion_tokens_and_capped_to_int32() -> None:
    assert to_request(user_request(max_tokens=50))["generationConfig"] == {"maxOutputTokens": 50}
    assert to_request(user_request(max_tokens=2**40))["generationConfig"] == {"maxOutputTokens": 2**31 - 1}


def test_consecutive_roles_merge_and_empty_texts_vanish() -> None:
    r = user_request("one")
    r.messages.add(role=types_pb2.ROLE_USER, content="")
    r.messages.add(role=types_pb2.ROLE_USER, parts=[chat_pb2.ContentPart(text="two")])
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, content="a")
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, content="b")
    assert to_request(r)["contents"] == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
        {"role": "model", "parts": [{"text": "a"}, {"text": "b"}]},
    ]


@pytest.mark.parametrize(("content", "response"), [
    ('{"temp_c": 21}', {"temp_c": 21}),
    ("  {\"big\": 123456789012345678901234567890}", {"big": 123456789012345678901234567890}),
    ("[1, 2]", {"output": "[1, 2]"}),
    ('"sunny"', {"output": '"sunny"'}),
    ("{not json", {"output": "{not json"}),
    ("", {"output": ""}),
])
def test_tool_results_become_function_responses(content: str, response: dict[str, Any]) -> None:
    r = user_request("Weather?")
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, tool_calls=[chat_pb2.ToolCall(
        id="call_1", type="function", function=chat_pb2.FunctionCall(name="get_weather", arguments="{}"))])
    r.messages.add(role=types_pb2.ROLE_TOOL, tool_call_id="call_1", content=content)
    assert to_request(r)["contents"][-1] == {
        "role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": response}}]}


def test_thought_signatures_round_trip_through_tool_call_ids() -> None:
    """Gemini's signature -> our id -> the client echoes the id -> the same signature on the same part."""
    response = translate.from_response(fixture_json("gemini", "tools.response.json"), call_for(user_request()))
    calls = response.choices[0].message.tool_calls
    signed, unsigned = calls[0].id, calls[1].id
    assert signed.startswith("call_") and "_ts_" in signed and "_ts_" not in unsigned
    assert set(signed) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    r = user_request("Weather?")
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, tool_calls=list(calls))
    for call in calls:
        r.messages.add(role=types_pb2.ROLE_TOOL, tool_call_id=call.id, content="{}")
    model_turn = to_request(r)["contents"][1]
    assert model_turn["parts"][0]["thoughtSignature"] == SIGNATURE  # byte for byte, same text
    assert "thoughtSignature" not in model_turn["parts"][1]
    assert [p["functionCall"]["name"] for p in model_turn["parts"]] == ["get_weather", "get_time"]


@pytest.mark.parametrize("call_id", [
    "call_abc", "toolu_01NRLabsLyVHZPKxbKvkfSMn", "call_DdmO9pD3xa9XTPNJ32zg2hcA", "call_DdmO9pD3xa9XTPNJ32zg2hcA_ts_",
    "call_DdmO9pD3xa9XTPNJ32zg2hcA_ts_a", "call_DdmO9pD3xa9XTPNJ32zg2hcA_ts_@@", "",
])
def test_ids_without_a_signature_carry_none(call_id: str) -> None:
    assert translate.signature_of(call_id) is None


def test_signature_ids_are_exact_for_any_bytes() -> None:
    for raw in (b"", b"\x00", b"\xff\xfe\xfd", bytes(range(256)) * 3):
        signature = base64.b64encode(raw).decode()
        assert translate.signature_of(translate.new_call_id(signature)) == (signature or None)
    assert translate.signature_of(translate.new_call_id("not base64!")) is None
    assert len({translate.new_call_id() for _ in range(100)}) == 100


def test_invalid_tool_arguments_are_a_400_with_param() -> None:
    r = user_request()
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, tool_calls=[chat_pb2.ToolCall(
        id="c", type="function", function=chat_pb2.FunctionCall(name="f", arguments="{oops"))])
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, tool_calls=[chat_pb2.ToolCall(
        id="d", type="function", function=chat_pb2.FunctionCall(name="f", arguments="[1]"))])
    with pytest.raises(GatewayError) as caught:
        to_request(r)
    assert caught.value.reason == Reason.INVALID_REQUEST
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"
    del r.messages[1]
    with pytest.raises(GatewayError) as caught:
        to_request(r)
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"


def with_message(**fields: Any) -> chat_pb2.CreateChatCompletionRequest:
    request = chat_pb2.CreateChatCompletionRequest(model="client-model")
    request.messages.add(role=types_pb2.ROLE_USER, content="Hello there, gateway!")
    request.messages.add(**fields)
    return request


@pytest.mark.parametrize(("request_", "reason", "param"), [
    (user_request(logit_bias_json='{"50256": -100}'), Reason.UNSUPPORTED_PARAMETER, "logit_bias"),
    (user_request(tools=[chat_pb2.Tool(raw_json='{"type": "custom", "custom": {"name": "g"}}')]),
     Reason.UNSUPPORTED_PARAMETER, "tools[0]"),
    (user_request(tool_choice=chat_pb2.ToolChoice(raw_json='{"type": "allowed_tools"}')),
     Reason.UNSUPPORTED_PARAMETER, "tool_choice"),
    (user_request(seed=2**31), Reason.INVALID_REQUEST, "seed"),
    (user_request(reasoning_effort="extreme"), Reason.INVALID_REQUEST, "reasoning_effort"),
    (with_message(role=types_pb2.ROLE_USER, parts=[chat_pb2.ContentPart(file=chat_pb2.FileInput(file_id="file-1"))]),
     Reason.UNSUPPORTED_PARAMETER, "messages[1].content[0].file.file_id"),
    (with_message(role=types_pb2.ROLE_USER, parts=[chat_pb2.ContentPart(raw_json='{"type": "x"}')]),
     Reason.UNSUPPORTED_PARAMETER, "messages[1].content[0]"),
    (with_message(role=types_pb2.ROLE_USER, parts=[chat_pb2.ContentPart(
        image_url=chat_pb2.ImageUrl(url="file:///etc/passwd"))]),
     Reason.INVALID_REQUEST, "messages[1].content[0].image_url.url"),
    (with_message(role=types_pb2.ROLE_USER, parts=[chat_pb2.ContentPart(
        image_url=chat_pb2.ImageUrl(url="data:image/png,notbase64"))]),
     Reason.INVALID_REQUEST, "messages[1].content[0].image_url.url"),
    (with_message(role=types_pb2.ROLE_SYSTEM, parts=[chat_pb2.ContentPart(
        image_url=chat_pb2.ImageUrl(url="https://example.com/a.png"))]),
     Reason.INVALID_REQUEST, "messages[1].content[0]"),
    (with_message(role=types_pb2.ROLE_TOOL, tool_call_id="call_unknown", content="{}"),
     Reason.INVALID_REQUEST, "messages[1].tool_call_id"),
    (with_message(content="no role"), Reason.INVALID_REQUEST, "messages[1].role"),
])
def test_requests_gemini_cannot_honour_are_refused(request_: chat_pb2.CreateChatCompletionRequest, reason: Reason,
                                                  param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        to_request(request_)
    assert (caught.value.reason, caught.value.param) == (reason, param)


def test_from_response_text_and_usage() -> None:
    response = translate.from_response(fixture_json("gemini", "text.response.json"), call_for(user_request()),
                                       provider=PROVIDER, created=CREATED)
    assert as_dict(response) == {
        "id": "7pT9aMrsMIqH7M8P6M-XwAY", "created": str(CREATED), "model": "client-model", "provider": PROVIDER,
        "choices": [{"message": {"role": "ROLE_ASSISTANT", "content": "Hello! How can I help you today?"},
                     "finish_reason": "FINISH_REASON_STOP"}],
        "usage": {"prompt_tokens": "6", "completion_tokens": "34", "total_tokens": "40", "reasoning_tokens": "25"},
    }


def test_from_response_orders_candidates_and_maps_logprobs() -> None:
    response = translate.from_response(fixture_json("gemini", "candidates.response.json"), call_for(user_request()),
                                       created=CREATED)
    first, second = as_dicts(list(response.choices))
    assert first == {"message": {"role": "ROLE_ASSISTANT", "content": "Hello! How can I assist you today?"},
                     "finish_reason": "FINISH_REASON_STOP"}
    assert second["index"] == 1 and second["finish_reason"] == "FINISH_REASON_LENGTH"
    assert json.loads(second["logprobs_json"]) == {"refusal": None, "content": [
        {"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": [
            {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
            {"token": "Hello", "logprob": -1.5, "bytes": [72, 101, 108, 108, 111]}]}]}
    assert as_dict(response.usage) == {"prompt_tokens": "19", "completion_tokens": "10", "total_tokens": "29",
                                       "cached_tokens": "3"}


def test_from_response_tool_calls() -> None:
    response = translate.from_response(fixture_json("gemini", "tools.response.json"), call_for(user_request()))
    choice = response.choices[0]
    assert choice.message.content == "Let me check both cities."
    assert choice.finish_reason == types_pb2.FINISH_REASON_TOOL_CALLS  # Gemini says STOP
    assert [(c.type, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        ("function", "get_weather", '{"city":"Paris","days":3,"units":{"temp":"celsius"}}'),
        ("function", "get_time", "{}")]
    assert translate.signature_of(choice.message.tool_calls[0].id) == SIGNATURE
    assert (response.usage.completion_tokens, response.usage.reasoning_tokens) == (131, 90)


def test_from_response_thinking_goes_to_reasoning_content() -> None:
    response = translate.from_response(fixture_json("gemini", "thinking.response.json"), call_for(user_request()))
    message = response.choices[0].message
    assert message.content == "9.9 is larger than 9.11."
    assert json.loads(message.extra_json) == {
        "reasoning_content": "**Comparing decimals**\n\nI line up the decimals: 9.11 against 9.90."}
    assert as_dict(response.usage) == {"prompt_tokens": "1024", "completion_tokens": "394", "total_tokens": "1418",
                                       "cached_tokens": "768", "reasoning_tokens": "383"}


@pytest.mark.parametrize("case", ["blocked", "safety"])
def test_from_response_blocked_is_one_filtered_choice(case: str) -> None:
    response = translate.from_response(fixture_json("gemini", f"{case}.response.json"), call_for(user_request()))
    assert as_dicts(list(response.choices)) == [
        {"message": {"role": "ROLE_ASSISTANT"}, "finish_reason": "FINISH_REASON_CONTENT_FILTER"}]
    assert response.usage.completion_tokens == 0 and response.usage.prompt_tokens > 0


def test_from_response_synthesizes_an_id() -> None:
    body = fixture_json("gemini", "text.response.json")
    del body["responseId"]
    assert translate.from_response(body, call_for(user_request())).id == "chatcmpl-req-test-1"


@pytest.mark.parametrize(("finish", "called_tools", "expected"), [
    ("STOP", False, types_pb2.FINISH_REASON_STOP),
    ("STOP", True, types_pb2.FINISH_REASON_TOOL_CALLS),
    ("MAX_TOKENS", True, types_pb2.FINISH_REASON_LENGTH),
    *[(value, False, types_pb2.FINISH_REASON_CONTENT_FILTER) for value in (
        "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION")],
    *[(value, True, types_pb2.FINISH_REASON_STOP) for value in (
        "MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS", "OTHER", "LANGUAGE",
        "FINISH_REASON_UNSPECIFIED", "NO_IMAGE", "IMAGE_OTHER")],
    (None, True, types_pb2.FINISH_REASON_UNSPECIFIED),
])
def test_finish_reasons(finish: str | None, called_tools: bool, expected: int) -> None:
    assert translate.gemini_to_finish_reason(finish, called_tools=called_tools) == expected


@pytest.mark.parametrize("finish", ["END_TURN", "stop", 1])
def test_unknown_finish_reason_is_an_error(finish: Any) -> None:
    body = fixture_json("gemini", "text.response.json")
    body["candidates"][0]["finishReason"] = finish
    with pytest.raises(ProviderError) as caught:
        translate.from_response(body, call_for(user_request()))
    assert caught.value.reason == Reason.UPSTREAM_ERROR


def test_usage_without_a_total_is_the_sum() -> None:
    usage = translate.usage_from({"promptTokenCount": 5, "candidatesTokenCount": 7, "thoughtsTokenCount": 2})
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (5, 9, 14)


@pytest.mark.parametrize("body", [
    [], {"candidates": "many"}, {"candidates": [{"index": 0}, {"index": 0}]}, {"usageMetadata": {}},
    {"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]},
    {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": [1]}}]}}]},
    {"candidates": [{"content": {"parts": [{"text": "x"}]}}], "usageMetadata": {"promptTokenCount": "many"}},
])
def test_malformed_responses_are_upstream_errors(body: Any) -> None:
    with pytest.raises(ProviderError) as caught:
        translate.from_response(body, call_for(user_request()))
    assert caught.value.reason == Reason.UPSTREAM_ERROR


def translate_stream(name: str) -> tuple[list[chat_pb2.StreamChatCompletionResponse], ProviderError | None]:
    translator = translate.StreamTranslator(call_for(user_request(stream=True)), provider=PROVIDER, created=CREATED)
    chunks: list[chat_pb2.StreamChatCompletionResponse] = []
    try:
        for event in fixture_events("gemini", name):
            chunks += translator.feed(event)
    except ProviderError as error:
        return chunks, error
    assert translator.finished
    return chunks + translator.finish(), None


def normalized(chunks: list[chat_pb2.StreamChatCompletionResponse]) -> list[dict[str, Any]]:
    """Chunks as dicts, each random tool-call id replaced by what it carries."""
    out = as_dicts(chunks)
    for chunk in out:
        for choice in chunk.get("choices", []):
            for call in choice.get("delta", {}).get("tool_calls", []):
                call["id"] = f"<call id, signature {translate.signature_of(call['id'])}>"
    return out


@pytest.mark.parametrize("case", ["text", "tools", "thinking", "candidates", "blocked"])
def test_stream_translates_recorded_events(case: str) -> None:
    chunks, error = translate_stream(f"{case}.sse")
    assert error is None
    assert normalized(chunks) == fixture_json("gemini", f"{case}.expected.json")


def test_stream_in_band_error_raises_after_earlier_chunks() -> None:
    chunks, error = translate_stream("midstream_error.sse")
    assert "".join(c.choices[0].delta.content for c in chunks) == "The capital of France is Paris, a city of"
    assert error is not None and error.reason == Reason.UPSTREAM_UNAVAILABLE


def test_stream_without_a_finish_is_not_finished() -> None:
    translator = translate.StreamTranslator(call_for(user_request(stream=True)))
    translator.feed(fixture_events("gemini", "text.sse")[0])
    assert not translator.finished and translator.usage is not None


def test_stream_unknown_finish_reason_is_an_error() -> None:
    translator = translate.StreamTranslator(call_for(user_request(stream=True)))
    with pytest.raises(ProviderError):
        translator.feed({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "NEW_REASON"}]})


def error_body(name: str) -> bytes:
    return json.dumps(fixture_json("gemini", name)).encode()


LEAKED_KEY = "AIzaSyDqWertYuiOpAsdFghJklZxcvbnmQwertyu"  # the key inside error_403.json


@pytest.mark.parametrize(("name", "status", "reason", "delay"), [
    ("error_400.json", 400, Reason.INVALID_REQUEST, None),
    ("error_400_signature.json", 400, Reason.INVALID_REQUEST, None),
    ("error_400_precondition.json", 400, Reason.INVALID_REQUEST, None),
    ("error_400_api_key.json", 400, Reason.UPSTREAM_ERROR, None),
    ("error_403.json", 403, Reason.UPSTREAM_ERROR, None),
    ("error_403.json", 401, Reason.UPSTREAM_ERROR, None),
    ("error_404.json", 404, Reason.UPSTREAM_ERROR, None),
    ("error_429.json", 429, Reason.UPSTREAM_RATE_LIMITED, 7.0),
    ("error_500.json", 500, Reason.UPSTREAM_UNAVAILABLE, None),
    ("error_503.json", 503, Reason.UPSTREAM_UNAVAILABLE, None),
    ("error_504.json", 504, Reason.UPSTREAM_TIMEOUT, None),
    ("error_503.json", 418, Reason.UPSTREAM_ERROR, None),
])
def test_map_error_table(name: str, status: int, reason: Reason, delay: float | None) -> None:
    error = translate.map_error(status, error_body(name), None)
    assert (error.reason, error.upstream_status, error.retry_after_seconds) == (reason, status, delay)
    for text in (error.message, error.upstream_body, repr(error)):
        assert LEAKED_KEY[:10] not in text and "https://" not in text


def test_map_error_400_keeps_the_scrubbed_message() -> None:
    error = translate.map_error(400, error_body("error_400_signature.json"), None)
    assert error.message.startswith("Function call is missing a thought_signature in functionCall parts.")
    assert "[url]" in error.message and "ai.google.dev" not in error.message
    error = translate.map_error(400, error_body("error_400.json"), None)
    assert "function_response.name: Name cannot be empty." in error.message


def test_map_error_auth_failures_keep_no_text_at_all() -> None:
    for name, status in (("error_403.json", 403), ("error_400_api_key.json", 400)):
        error = translate.map_error(status, error_body(name), None)
        assert error.message == "upstream authentication failed"
        assert error.upstream_body in ("status=PERMISSION_DENIED reasons=CONSUMER_SUSPENDED",
                                       "status=INVALID_ARGUMENT reasons=API_KEY_INVALID")


def test_keys_never_survive_in_messages() -> None:
    keys = ("AIzaSyAbcdefGhijkLmnopQrstUvwxyzABCDEFG", "AIzaSy0123456789abcdefghijklmnopqrstuvw")
    for key in keys:
        body = json.dumps({"error": {"code": 400, "message": f"Bad key {key} in https://x.example/?key={key}",
                                     "status": "INVALID_ARGUMENT"}}).encode()
        error = translate.map_error(400, body, None)
        for text in (error.message, error.upstream_body):
            assert key not in text and key[:12] not in text and "x.example" not in text


@pytest.mark.parametrize(("retry_after", "expected"), [("2", 2.0), (None, 7.0), ("soon", 7.0)])
def test_map_error_429_prefers_retry_after(retry_after: str | None, expected: float) -> None:
    assert translate.map_error(429, error_body("error_429.json"), retry_after).retry_after_seconds == expected


@pytest.mark.parametrize(("delay", "expected"), [("7s", 7.0), ("0.5s", 0.5), ("1.250s", 1.25), ("7", None),
                                                  ("-1s", None), ("", None)])
def test_retry_info_delays(delay: str, expected: float | None) -> None:
    detail = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
    assert translate.retry_delay({"details": [detail]}) == expected


def test_map_error_reads_a_listed_body_and_survives_garbage() -> None:
    listed = json.dumps([fixture_json("gemini", "error_429.json")]).encode()
    assert translate.map_error(429, listed, None).retry_after_seconds == 7.0
    error = translate.map_error(400, b"<html>Bad Request</html>", None)
    assert error.message == "the upstream provider rejected the request"


@pytest.mark.parametrize(("error", "reason"), [
    ({"code": 429, "status": "RESOURCE_EXHAUSTED"}, Reason.UPSTREAM_RATE_LIMITED),
    ({"code": 503, "status": "UNAVAILABLE"}, Reason.UPSTREAM_UNAVAILABLE),
    ({"code": 500, "status": "INTERNAL"}, Reason.UPSTREAM_UNAVAILABLE),
    ({"code": 504, "status": "DEADLINE_EXCEEDED"}, Reason.UPSTREAM_TIMEOUT),
    ({"code": 400, "status": "INVALID_ARGUMENT", "message": "bad"}, Reason.UPSTREAM_ERROR),
    ("text", Reason.UPSTREAM_ERROR),
])
def test_errors_inside_a_stream(error: Any, reason: Reason) -> None:
    translator = translate.StreamTranslator(call_for(user_request(stream=True)))
    with pytest.raises(ProviderError) as caught:
        translator.feed({"error": error})
    assert caught.value.reason == reason


def test_translator_modules_are_pure() -> None:
    """translate and its pieces import neither httpx nor grpc (nor do I/O or logging)."""
    package = Path(translate.__file__).parent
    for name in ("translate.py", "request.py", "contents.py", "response.py", "stream.py", "error_map.py",
                 "call_ids.py"):
        tree = ast.parse((package / name).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {m for m in imported if m.split(".")[0] in {"httpx", "grpc", "logging", "asyncio"}}, name
