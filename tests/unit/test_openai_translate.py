"""The OpenAI translator against recorded wire fixtures (tests/fixtures/openai/)."""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway_core.errors import GatewayError, Reason
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import ProviderError
from gateway_core.providers.openai import translate
from tests.providers_support import as_dict, as_dicts, call_for, fixture_events, fixture_json, user_request

PROVIDER = "openai-test"


def wire(body: dict[str, Any]) -> Any:
    """What the client would put on the wire, parsed back (exact integers)."""
    return json.loads(orjson.dumps(body))


def full_request() -> chat_pb2.CreateChatCompletionRequest:
    """The gateway request behind chat_full.request.json."""
    r = chat_pb2.CreateChatCompletionRequest(model="client-model")
    r.messages.add(role=types_pb2.ROLE_DEVELOPER, content="Be terse.")
    r.messages.add(role=types_pb2.ROLE_SYSTEM, name="ops",
                   parts=[chat_pb2.ContentPart(text="You answer about weather.")])
    r.messages.add(role=types_pb2.ROLE_USER, parts=[
        chat_pb2.ContentPart(text="What is in this image?"),
        chat_pb2.ContentPart(image_url=chat_pb2.ImageUrl(url="data:image/png;base64,iVBORw0KGgo=", detail="low")),
        chat_pb2.ContentPart(image_url=chat_pb2.ImageUrl(url="https://example.com/cat.png")),
        chat_pb2.ContentPart(input_audio=chat_pb2.InputAudio(data="UklGRg==", format="wav")),
        chat_pb2.ContentPart(file=chat_pb2.FileInput(file_data="data:application/pdf;base64,JVBERi0=",
                                                     filename="a.pdf")),
        chat_pb2.ContentPart(file=chat_pb2.FileInput(file_id="file-abc123")),
        chat_pb2.ContentPart(raw_json='{"type": "future_part", "future_part": {"x": 1}}'),
    ])
    r.messages.add(
        role=types_pb2.ROLE_ASSISTANT,
        tool_calls=[chat_pb2.ToolCall(id="call_abc", type="function", function=chat_pb2.FunctionCall(
            name="get_weather", arguments='{"city":"Paris"}'))],
        extra_json='{"reasoning_content": "The user wants the weather.", "role": "system"}',
    )
    r.messages.add(role=types_pb2.ROLE_TOOL, content='{"temp_c":21}', tool_call_id="call_abc")
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, parts=[chat_pb2.ContentPart(refusal="I can't help with that.")],
                   refusal="I can't help with that.")
    r.temperature, r.top_p, r.max_completion_tokens, r.n, r.seed = 0.2, 0.9, 256, 2, 42
    r.parallel_tool_calls, r.frequency_penalty, r.presence_penalty = False, -0.5, 0.25
    r.logprobs, r.top_logprobs = True, 3
    r.stop.extend(["\n\n", "END"])
    r.user = "user-1234"
    r.tools.add(type="function", function=chat_pb2.FunctionDefinition(
        name="get_weather", description="Weather for a city", strict=True,
        parameters_json='{"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", '
                        '"minimum": 1, "maximum": 18446744073709551616, "multipleOf": 0.5}}, "required": ["city"], '
                        '"additionalProperties": false}'))
    r.tools.add(type="function", function=chat_pb2.FunctionDefinition(name="get_time"))
    r.tools.add(raw_json='{"type": "custom", "custom": {"name": "grammar_tool", "format": {"type": "text"}}}')
    r.tool_choice.mode, r.tool_choice.function_name = chat_pb2.TOOL_CHOICE_MODE_FUNCTION, "get_weather"
    r.response_format.type = chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    r.response_format.json_schema.CopyFrom(chat_pb2.JsonSchemaFormat(
        name="weather", description="A forecast", strict=True,
        schema_json='{"type": "object", "properties": {"temp_c": {"type": "number"}}, "required": ["temp_c"]}'))
    r.logit_bias_json = '{"50256": -100}'
    r.reasoning_effort = "low"
    r.metadata.update({"team": "search", "a": "1"})
    r.stream_options.include_usage = True  # ignored when not streaming
    r.extra_json = json.dumps({
        "store": True, "prompt_cache_key": "weather-v1",
        "model": "evil-model", "messages": [], "stream": True, "stream_options": {"include_usage": False},
        "temperature": 2,
    })
    return r


def test_to_request_full_matches_recorded() -> None:
    body = translate.to_request(call_for(full_request(), "gpt-4o-2024-08-06"), stream=False)
    assert wire(body) == fixture_json("openai", "chat_full.request.json")


def test_to_request_stream_matches_recorded() -> None:
    r = chat_pb2.StreamChatCompletionRequest(model="client-model", temperature=0.0, max_tokens=50)
    r.messages.add(role=types_pb2.ROLE_SYSTEM, content="You are helpful.")
    r.messages.add(role=types_pb2.ROLE_USER, content="Hi!", name="alice")
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, content="Hello! How can I help?",
                   extra_json='{"reasoning_content":"Greet back."}')
    r.messages.add(role=types_pb2.ROLE_USER, content="")
    r.tools.add(function=chat_pb2.FunctionDefinition(name="noop", parameters_json="{}"))
    r.tool_choice.mode = chat_pb2.TOOL_CHOICE_MODE_REQUIRED
    r.response_format.type = chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT
    r.stream_options.include_obfuscation = False
    body = translate.to_request(call_for(r, "deepseek-chat"), stream=True)
    assert wire(body) == fixture_json("openai", "stream_basic.request.json")


def test_to_request_always_asks_for_usage_when_streaming() -> None:
    body = translate.to_request(call_for(user_request(stream=True)), stream=True)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert "stream" not in translate.to_request(call_for(user_request()), stream=False)


def test_to_request_sends_only_fields_the_client_set() -> None:
    body = translate.to_request(call_for(user_request(), "m"), stream=False)
    assert body == {"model": "m", "messages": [{"role": "user", "content": "Hello there, gateway!"}]}


def test_to_request_keeps_numbers_exact() -> None:
    r = user_request(extra_json='{"huge": 123456789012345678901234567890, "tiny": 1e-400, "big": 1e400}')
    encoded = orjson.dumps(translate.to_request(call_for(r), stream=False))
    assert b'"huge":123456789012345678901234567890' in encoded
    assert b'"tiny":1e-400' in encoded and b'"big":1e400' in encoded


@pytest.mark.parametrize(("field", "value", "param"), [
    ("extra_json", "[1, 2]", "extra_json"),
    ("extra_json", "{not json", "extra_json"),
    ("logit_bias_json", "NaN", "logit_bias"),
])
def test_to_request_rejects_bad_json_fields(field: str, value: str, param: str) -> None:
    fields: dict[str, Any] = {field: value}
    r = user_request(**fields)
    with pytest.raises(GatewayError) as caught:
        translate.to_request(call_for(r), stream=False)
    assert caught.value.reason == Reason.INVALID_REQUEST and caught.value.param == param


SMUGGLED = ("api_key", "api_base", "base_url", "extra_headers", "headers", "organization", "deployment_id",
            "custom_llm_provider", "timeout", "user_api_key", "API_BASE", "Api-Key", " base_url ")


def test_to_request_strips_connection_and_credential_fields_from_extra_json() -> None:
    """A gRPC caller bypasses the facade's filter: the translator strips them too."""
    extra = {name: "http://169.254.169.254/latest" for name in SMUGGLED}
    extra |= {"extra_headers": {"x-evil": "1"}, "headers": {"authorization": "Bearer stolen"}, "store": True}
    body = translate.to_request(call_for(user_request(extra_json=json.dumps(extra))), stream=False)
    assert set(body) == {"model", "messages", "store"}


def test_extra_json_cannot_raise_the_output_held_for() -> None:
    """The hold was computed from max_*tokens and n: extra_json must not add to them."""
    extra = {"max_tokens": 100000, "max_completion_tokens": 100000, "n": 64}
    body = translate.to_request(call_for(user_request(max_tokens=5, extra_json=json.dumps(extra))), stream=False)
    assert {k: body.get(k) for k in ("max_tokens", "max_completion_tokens", "n")} == {
        "max_tokens": 5, "max_completion_tokens": None, "n": None}


def test_to_request_rejects_a_message_without_role() -> None:
    r = user_request()
    r.messages.add(content="who am I?")
    with pytest.raises(GatewayError) as caught:
        translate.to_request(call_for(r), stream=False)
    assert caught.value.param == "messages[1].role"


def test_from_response_text_with_logprobs_and_usage() -> None:
    response = translate.from_response(fixture_json("openai", "text.response.json"), call_for(user_request()),
                                       provider=PROVIDER)
    assert as_dict(response) == {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "created": "1741569952", "model": "client-model",
        "provider": PROVIDER, "system_fingerprint": "fp_fc9f1d7035", "service_tier": "default",
        "choices": [
            {"message": {"role": "ROLE_ASSISTANT", "content": "Hello! How can I assist you today?",
                         "extra_json": '{"annotations":[]}'},
             "finish_reason": "FINISH_REASON_STOP"},
            {"index": 1, "message": {"role": "ROLE_ASSISTANT", "content": "Hi there!",
                                     "extra_json": '{"annotations":[]}'},
             "finish_reason": "FINISH_REASON_LENGTH",
             "logprobs_json": '{"content":[{"token":"Hi","logprob":-0.25,"bytes":[72,105],"top_logprobs":[]}],'
                              '"refusal":null}'},
        ],
        "usage": {"prompt_tokens": "19", "completion_tokens": "10", "total_tokens": "29", "cached_tokens": "3",
                  "reasoning_tokens": "2"},
    }


def test_from_response_tool_calls() -> None:
    response = translate.from_response(fixture_json("openai", "tool_calls.response.json"), call_for(user_request()))
    choice = response.choices[0]
    assert not choice.message.HasField("content")
    assert choice.finish_reason == types_pb2.FINISH_REASON_TOOL_CALLS
    assert [(c.id, c.type, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        ("call_abc", "function", "get_weather", '{"city":"Paris"}'), ("call_def", "function", "get_time", "{}")]
    assert response.usage.total_tokens == 123 and response.usage.cached_tokens == 0


def test_from_response_deepseek_reasoning_and_cache_hits() -> None:
    response = translate.from_response(fixture_json("openai", "deepseek_reasoning.response.json"),
                                       call_for(user_request()))
    message = response.choices[0].message
    assert json.loads(message.extra_json) == {"reasoning_content": "Compare the decimals: 0.11 < 0.80."}
    assert (response.usage.cached_tokens, response.usage.reasoning_tokens) == (16, 48)


def test_from_response_without_usage_leaves_it_unset() -> None:
    body = fixture_json("openai", "tool_calls.response.json")
    del body["usage"]
    assert not translate.from_response(body, call_for(user_request())).HasField("usage")


def test_from_response_with_all_zero_usage_still_sets_it() -> None:
    # Usage is filled in place on the response: an upstream that reports zero tokens has still
    # reported usage (metering trusts it), exactly as when a whole Usage message was copied in.
    body = fixture_json("openai", "tool_calls.response.json")
    body["usage"] = {"prompt_tokens": 0, "completion_tokens": 0}
    response = translate.from_response(body, call_for(user_request()))
    assert response.HasField("usage")
    assert response.usage == types_pb2.Usage()
    assert translate.usage_from(body["usage"]) == response.usage


def test_from_response_keeps_a_logprobs_object_and_leaves_a_null_one_empty() -> None:
    body = fixture_json("openai", "text.response.json")
    body["choices"][0]["logprobs"] = None
    body["choices"][1]["logprobs"] = {"content": []}
    response = translate.from_response(body, call_for(user_request()))
    assert [c.logprobs_json for c in response.choices] == ["", '{"content":[]}']


@pytest.mark.parametrize("finish_reason", ["eos", "end_turn", 3])
def test_unknown_finish_reason_is_an_error(finish_reason: Any) -> None:
    body = fixture_json("openai", "text.response.json")
    body["choices"][0]["finish_reason"] = finish_reason
    with pytest.raises(ProviderError) as caught:
        translate.from_response(body, call_for(user_request()))
    assert caught.value.reason == Reason.UPSTREAM_ERROR


@pytest.mark.parametrize("body", [[], {"object": "chat.completion"}, {"choices": [{"message": "hi"}]},
                                  {"choices": [], "usage": {"prompt_tokens": "many"}}])
def test_malformed_responses_are_upstream_errors(body: Any) -> None:
    with pytest.raises(ProviderError) as caught:
        translate.from_response(body, call_for(user_request()))
    assert caught.value.reason == Reason.UPSTREAM_ERROR


def test_an_error_body_with_status_200_raises() -> None:
    with pytest.raises(ProviderError) as caught:
        translate.from_response({"error": {"message": "busy", "type": "server_error"}}, call_for(user_request()))
    assert caught.value.reason == Reason.UPSTREAM_UNAVAILABLE


def translate_stream(name: str) -> tuple[list[chat_pb2.StreamChatCompletionResponse], ProviderError | None]:
    translator = translate.StreamTranslator(call_for(user_request(stream=True)), provider=PROVIDER)
    chunks: list[chat_pb2.StreamChatCompletionResponse] = []
    try:
        for event in fixture_events("openai", name):
            chunks += translator.feed(event)
    except ProviderError as error:
        return chunks, error
    return chunks + translator.finish(), None


@pytest.mark.parametrize("case", ["text", "parallel_tools", "reasoning"])
def test_stream_translates_recorded_chunks(case: str) -> None:
    chunks, error = translate_stream(f"{case}.sse")
    assert error is None
    assert as_dicts(chunks) == fixture_json("openai", f"{case}.expected.json")


def test_stream_in_band_error_raises_after_earlier_chunks() -> None:
    chunks, error = translate_stream("in_stream_error.sse")
    assert as_dicts(chunks) == fixture_json("openai", "in_stream_error.expected.json")
    assert error is not None and error.reason == Reason.UPSTREAM_UNAVAILABLE
    assert "CUDA" not in error.message


def test_stream_normalizes_repeated_and_missing_tool_call_fields() -> None:
    translator = translate.StreamTranslator(call_for(user_request(stream=True)))
    base = {"id": "x", "created": 1, "choices": []}
    first = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    deltas = [
        {"role": "assistant", "tool_calls": [first]},
        {"role": "assistant", "tool_calls": [{**first, "function": {"name": "f", "arguments": "{}"}}]},
        {"tool_calls": [{"id": "call_2", "function": {"name": "g", "arguments": {"a": 1}}}]},
        {"tool_calls": [{"function": {"arguments": "more"}}]},
    ]
    out = [translator.feed({**base, "choices": [{"index": 0, "delta": d}]})[0].choices[0].delta for d in deltas]
    assert [d.role for d in out] == [types_pb2.ROLE_ASSISTANT, 0, 0, 0]
    calls = [d.tool_calls[0] for d in out]
    assert [(c.index, c.id, c.function.name, c.function.arguments) for c in calls] == [
        (0, "call_1", "f", ""), (0, "", "", "{}"), (1, "call_2", "g", '{"a":1}'), (1, "", "", "more")]
    assert [c.function.HasField("name") for c in calls] == [True, False, True, False]
    assert not translator.finished


def test_stream_unknown_finish_reason_is_an_error() -> None:
    translator = translate.StreamTranslator(call_for(user_request(stream=True)))
    with pytest.raises(ProviderError):
        translator.feed({"id": "x", "created": 1, "choices": [{"index": 0, "delta": {}, "finish_reason": "eos"}]})


NOW = datetime(2025, 3, 10, 12, 0, 0, tzinfo=UTC)
LEAKY = (b'{"error": {"message": "Incorrect API key provided: sk-proj-AbCdEf0123456789AbCdEf0123456789. '
         b'You can find your API key at https://platform.openai.com/account/api-keys.", '
         b'"type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}')


@pytest.mark.parametrize(("status", "reason"), [
    (400, Reason.INVALID_REQUEST), (401, Reason.UPSTREAM_ERROR), (403, Reason.UPSTREAM_ERROR),
    (404, Reason.UPSTREAM_ERROR), (408, Reason.UPSTREAM_TIMEOUT), (409, Reason.UPSTREAM_ERROR),
    (422, Reason.INVALID_REQUEST), (429, Reason.UPSTREAM_RATE_LIMITED), (500, Reason.UPSTREAM_UNAVAILABLE),
    (502, Reason.UPSTREAM_UNAVAILABLE), (503, Reason.UPSTREAM_UNAVAILABLE), (504, Reason.UPSTREAM_TIMEOUT),
    (529, Reason.UPSTREAM_UNAVAILABLE), (307, Reason.UPSTREAM_ERROR), (418, Reason.UPSTREAM_ERROR),
])
def test_map_error_table_never_leaks_the_key(status: int, reason: Reason) -> None:
    error = translate.map_error(status, LEAKY, None, now=NOW)
    assert error.reason == reason and error.upstream_status == status
    for text in (error.message, error.upstream_body, str(error)):
        assert "sk-proj" not in text and "AbCdEf0123" not in text and "platform.openai.com" not in text


def test_map_error_400_keeps_a_scrubbed_message_and_param() -> None:
    body = json.dumps({"error": {
        "message": "Invalid 'messages[0].content': see https://internal.example/x?key=abc. Token "
                   "Bearer eyJhbGciOi.J9xYz and gsk_live_9f8e7d6c5b4a3 and AKIAIOSFODNN7EXAMPLE9 " + "x" * 600,
        "type": "invalid_request_error", "param": "messages[0].content", "code": None}}).encode()
    error = translate.map_error(400, body, None)
    assert error.param == "messages[0].content"
    assert error.message.startswith("Invalid 'messages[0].content': see [url]")
    for secret in ("internal.example", "eyJhbGciOi", "gsk_live", "AKIAIOSFODNN7"):
        assert secret not in error.message
    assert len(error.message) <= 500


def test_map_error_400_without_a_json_body() -> None:
    error = translate.map_error(400, b"<html>Bad Request</html>", None)
    assert error.message == "the upstream provider rejected the request" and error.param is None


@pytest.mark.parametrize(("headers", "expected"), [
    (("2", None), 2.0),
    (("0.5", None), 0.5),
    (("Mon, 10 Mar 2025 12:00:30 GMT", None), 30.0),
    (("Mon, 10 Mar 2025 11:00:00 GMT", None), 0.0),
    (("soon", None), None),
    (("20", "1500"), 1.5),
    ((None, None), None),
])
def test_map_error_429_retry_after(headers: tuple[str | None, str | None], expected: float | None) -> None:
    retry_after, retry_after_ms = headers
    error = translate.map_error(429, b"{}", retry_after, retry_after_ms=retry_after_ms, now=NOW)
    assert error.reason == Reason.UPSTREAM_RATE_LIMITED and error.retry_after_seconds == expected


def test_map_error_429_quota_is_not_retryable() -> None:
    body = json.dumps({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                                 "code": "insufficient_quota"}}).encode()
    error = translate.map_error(429, body, "5")
    assert error.message == "upstream quota exhausted" and error.retry_after_seconds is None


FLAT_ERRORS = [
    # Mistral's flat body, message as text.
    (400, {"object": "error", "message": "Tool call id was call_abc but must be a-z, A-Z, 0-9, with a length of 9.",
           "type": "invalid_request_error", "param": None, "code": "3280"},
     Reason.INVALID_REQUEST, "Tool call id was call_abc but must be a-z, A-Z, 0-9, with a length of 9.", None),
    # A 422 whose message is pydantic's report (Mistral, 2024-2025): "where: what", never the input.
    (422, {"object": "error", "message": {"detail": [
        {"type": "extra_forbidden", "loc": ["body", "logprobs"], "msg": "Extra inputs are not permitted",
         "input": "SECRET-INPUT", "url": "https://errors.pydantic.dev/2.10/v/extra_forbidden"}]},
           "type": "invalid_request_error", "param": None, "code": None},
     Reason.INVALID_REQUEST, "logprobs: Extra inputs are not permitted", "logprobs"),
    # The same report as JSON text inside the message (Mistral, early 2024).
    (422, {"object": "error", "message": json.dumps({"detail": [
        {"type": "extra_forbidden", "loc": ["body", "messages", 0, "user", "name"],
         "msg": "Extra inputs are not permitted", "input": "SECRET-INPUT"}]}), "type": "internal_error_proxy",
           "param": None, "code": "1000"},
     Reason.INVALID_REQUEST, "messages.0.user.name: Extra inputs are not permitted", None),
    # ... and as a list, next to a top-level detail.
    (422, {"object": "Error", "detail": [{"type": "extra_forbidden", "loc": ["body", "tools"],
                                          "msg": "Extra inputs are not permitted", "input": []}],
           "message": [{"type": "extra_forbidden", "loc": ["body", "tools"], "msg": "Extra inputs are not permitted",
                        "input": []}], "type": "invalid_request_error", "code": 3001},
     Reason.INVALID_REQUEST, "tools: Extra inputs are not permitted", "tools"),
    # FastAPI-style bare detail (Mistral's codestral, vLLM's older routes).
    (422, {"detail": [{"loc": ["body", "store"], "msg": "Extra inputs are not permitted"}]},
     Reason.INVALID_REQUEST, "store: Extra inputs are not permitted", "store"),
    (400, {"detail": "Not a valid request"}, Reason.INVALID_REQUEST, "Not a valid request", None),
    # vLLM's flat shape, code as a number.
    (400, {"object": "error", "message": "max_tokens must be at least 1, got 0.", "type": "BadRequestError",
           "param": None, "code": 400}, Reason.INVALID_REQUEST, "max_tokens must be at least 1, got 0.", None),
    # Just a message, and an error that is only a string (Ollama).
    (400, {"message": "bad things"}, Reason.INVALID_REQUEST, "bad things", None),
    (400, {"error": "model 'x' not found"}, Reason.INVALID_REQUEST, "model 'x' not found", None),
    # A flat key echo is still scrubbed, and auth failures never show their text.
    (400, {"object": "error", "message": "Invalid key sk-proj-AbCdEf0123456789AbCdEf0123456789, see "
                                         "https://console.mistral.ai/api-keys", "type": "invalid_request_error"},
     Reason.INVALID_REQUEST, "Invalid key [redacted], see [url]", None),
    (403, {"object": "error", "message": "This model is not available in your subscription tier",
           "type": "tier_not_allowed", "param": None, "code": "1910", "raw_status_code": 403},
     Reason.UPSTREAM_ERROR, "upstream authentication failed", None),
]


@pytest.mark.parametrize(("status", "body", "reason", "message", "param"), FLAT_ERRORS)
def test_map_error_reads_flat_and_validation_bodies(status: int, body: Any, reason: Reason, message: str,
                                                    param: str | None) -> None:
    error = translate.map_error(status, json.dumps(body).encode(), None)
    assert (error.reason, error.message, error.param) == (reason, message, param)
    assert "SECRET-INPUT" not in error.message  # what the client sent is not quoted back
    assert "AbCdEf0123" not in error.message and "AbCdEf0123" not in error.upstream_body


def test_error_in_body_reads_a_flat_in_stream_error() -> None:
    error = translate.error_in_body({"object": "error", "message": "overloaded", "type": "server_error"})
    assert error.reason == Reason.UPSTREAM_UNAVAILABLE


def test_translator_modules_are_pure() -> None:
    """translate and its pieces import neither httpx nor grpc (nor do I/O or logging)."""
    package = Path(translate.__file__).parent
    for name in ("translate.py", "request.py", "adapt.py", "vendors.py", "response.py", "error_map.py"):
        tree = ast.parse((package / name).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {m for m in imported if m.split(".")[0] in {"httpx", "grpc", "logging", "asyncio"}}, name


@pytest.mark.parametrize("choice", [
    {"index": 0, "delta": {"content": "plain"}, "finish_reason": None},
    {"index": 0, "delta": {"content": ""}, "logprobs": None},
    {"index": 2, "delta": {"content": "second choice"}},
    {"delta": {"content": "no index"}},
    {"index": 0, "delta": {"content": "finishing"}, "finish_reason": "stop"},
    {"index": 0, "delta": {"content": "with logprobs"}, "logprobs": {"content": []}},
    {"index": 0, "delta": {"content": "x", "refusal": None}},
    {"index": 0, "delta": {"content": "x", "reasoning_content": "why"}},
    {"index": 0, "delta": {"role": "assistant", "content": "repeated role"}},
    {"index": 5, "delta": {"content": "a choice not started yet"}},
    {"index": True, "delta": {"content": "a bool index"}},
    {"index": 0, "delta": {"content": None}},
])
def test_stream_text_only_short_path_builds_what_the_general_path_builds(choice: dict[str, Any]) -> None:
    """A later chunk whose choice is text alone takes a short path: same message, same errors."""
    def run(general: bool) -> Any:
        translator = translate.StreamTranslator(call_for(user_request(stream=True)), provider=PROVIDER)
        if general:
            translator._text_only = lambda choice: None  # type: ignore[method-assign]
        head = {"id": "c1", "created": 3, "system_fingerprint": "fp"}
        translator.feed({**head, "choices": [{"index": i, "delta": {"role": "assistant"}} for i in range(3)]})
        try:
            return as_dicts(translator.feed({**head, "choices": [choice]}))
        except ProviderError as error:
            return error.reason, error.message

    assert run(general=False) == run(general=True)


def test_stream_text_chunks_carry_each_chunks_own_fingerprint_and_tier_as_the_general_path_does() -> None:
    """The short path reuses an encoded head while fingerprint and tier stay the same: never past a change."""
    marks: list[dict[str, Any]] = [
        {}, {}, {"system_fingerprint": "fp_a"}, {"system_fingerprint": "fp_a"}, {"system_fingerprint": "fp_b"},
        {"system_fingerprint": "fp_b", "service_tier": "default"}, {"service_tier": "default"}, {},
        {"system_fingerprint": ""}, {"system_fingerprint": 7}, {"system_fingerprint": "fp_a", "service_tier": "flex"},
    ]

    def run(general: bool) -> list[Any]:
        translator = translate.StreamTranslator(call_for(user_request(stream=True)), provider=PROVIDER)
        if general:
            translator._text_only = lambda choice: None  # type: ignore[method-assign]
        out = as_dicts(translator.feed({"id": "c1", "created": 3, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
        for number, mark in enumerate(marks):
            out += as_dicts(translator.feed(
                {"id": "c1", "created": 3, **mark, "choices": [{"index": 0, "delta": {"content": f"t{number}"}}]}))
        return out

    short, general = run(general=False), run(general=True)
    assert short == general
    assert [chunk.get("system_fingerprint", "") for chunk in short[1:]] == [
        "", "", "fp_a", "fp_a", "fp_b", "fp_b", "", "", "", "", "fp_a"]
    assert [chunk.get("service_tier", "") for chunk in short[1:]] == ["", "", "", "", "", "default", "default", "",
                                                                      "", "", "flex"]
