"""The Anthropic translator against recorded wire fixtures (tests/fixtures/anthropic/).

Stream fixtures are Anthropic's own SSE wire format (named events), shaped
after anthropic-sdk-python tests/lib/streaming/fixtures/*.txt.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway_core.errors import GatewayError, Reason
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.anthropic import translate
from gateway_core.providers.anthropic.error_map import OVERLOADED_RETRY_SECONDS
from gateway_core.providers.anthropic.request import DEFAULT_MAX_TOKENS, RESPONSE_TOOL_DESCRIPTION
from gateway_core.providers.base import ChatRequest, ProviderError
from gateway_core.providers.sse import SseDecoder
from tests.providers_support import FIXTURES, as_dict, as_dicts, call_for, fixture_json, user_request

PROVIDER = "anthropic-test"
CREATED = 1741569952
WEATHER_SCHEMA = '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}'


def wire(body: dict[str, Any]) -> Any:
    """What the client would put on the wire, parsed back (exact integers)."""
    return json.loads(orjson.dumps(body))


def body_of(request: ChatRequest, *, stream: bool = False) -> Any:
    return wire(translate.to_request(call_for(request, "claude-sonnet-4-5"), stream=stream))


def refused(request: ChatRequest) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        translate.to_request(call_for(request), stream=False)
    return caught.value


def weather_tool(name: str = "get_weather") -> chat_pb2.Tool:
    function = chat_pb2.FunctionDefinition(name=name, parameters_json=WEATHER_SCHEMA)
    return chat_pb2.Tool(type="function", function=function)


def full_request() -> chat_pb2.CreateChatCompletionRequest:
    """The gateway request behind chat_full.request.json: every mapped row at once."""
    r = chat_pb2.CreateChatCompletionRequest(model="client-model")
    r.messages.add(role=types_pb2.ROLE_SYSTEM, content="You are a weather assistant.")
    r.messages.add(role=types_pb2.ROLE_USER, parts=[
        chat_pb2.ContentPart(text="What is in these images?"),
        chat_pb2.ContentPart(image_url=chat_pb2.ImageUrl(url="data:image/png;base64,iVBORw0KGgo=", detail="low")),
        chat_pb2.ContentPart(image_url=chat_pb2.ImageUrl(url="data:image/jpg;base64,/9j/4AAQ")),
        chat_pb2.ContentPart(image_url=chat_pb2.ImageUrl(url="https://example.com/cat.webp", detail="high")),
        chat_pb2.ContentPart(image_url=chat_pb2.ImageUrl(url="data:application/pdf;base64,JVBERi0=")),
        chat_pb2.ContentPart(file=chat_pb2.FileInput(file_data="data:application/pdf;base64,JVBERi0xLjc=",
                                                     filename="report.pdf")),
    ])
    r.messages.add(role=types_pb2.ROLE_DEVELOPER, parts=[chat_pb2.ContentPart(text="Answer in metric units."),
                                                         chat_pb2.ContentPart(text="")])
    r.messages.add(role=types_pb2.ROLE_USER, content="And the weather in Paris and Berlin?")
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, content="Checking both.", tool_calls=[
        chat_pb2.ToolCall(id="toolu_01", type="function", function=chat_pb2.FunctionCall(
            name="get_weather", arguments='{"city": "Paris", "days": 18446744073709551616}')),
        chat_pb2.ToolCall(id="toolu_02", type="function", function=chat_pb2.FunctionCall(name="get_time")),
    ], extra_json='{"reasoning_content": "two calls"}')
    r.messages.add(role=types_pb2.ROLE_TOOL, tool_call_id="toolu_01", content='{"temp_c":21}')
    r.messages.add(role=types_pb2.ROLE_TOOL, tool_call_id="toolu_02", parts=[chat_pb2.ContentPart(text="12:00")])
    r.messages.add(role=types_pb2.ROLE_USER, content="Thanks! Summarize.")
    r.messages.add(role=types_pb2.ROLE_USER, content="Briefly.", name="alice")
    r.temperature, r.top_p, r.max_completion_tokens, r.max_tokens = 0.2, 0.9, 512, 100
    # No-op values of unsupported parameters pass: frameworks send them on every request.
    r.n, r.parallel_tool_calls, r.frequency_penalty, r.presence_penalty, r.logprobs = 1, False, 0.0, 0.0, False
    r.stop.extend(["\n\n", "END", "  "])
    r.user = "user-8f3a"
    r.tools.add(type="function", function=chat_pb2.FunctionDefinition(
        name="get_weather", description="Weather for a city", strict=True,
        parameters_json='{"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", '
                        '"maximum": 18446744073709551616}}, "required": ["city"], "additionalProperties": false}'))
    r.tools.add(type="function", function=chat_pb2.FunctionDefinition(name="get_time"))
    r.tool_choice.mode = chat_pb2.TOOL_CHOICE_MODE_AUTO
    r.logit_bias_json = "{}"
    r.metadata.update({"team": "search"})  # OpenAI stored completions: never Anthropic metadata
    r.extra_json = json.dumps({"store": True, "service_tier": "flex", "top_k": 5})  # OpenAI dialect: dropped
    return r


def test_to_request_full_matches_recorded() -> None:
    assert body_of(full_request()) == fixture_json("anthropic", "chat_full.request.json")


def test_to_request_structured_output_stream_matches_recorded() -> None:
    r = user_request("Weather in Paris as JSON.", stream=True, temperature=0.5, top_p=0.9, reasoning_effort="high")
    r.response_format.type = chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    r.response_format.json_schema.CopyFrom(chat_pb2.JsonSchemaFormat(
        name="weather", description="A forecast", strict=True,
        schema_json='{"type": "object", "properties": {"temp_c": {"type": "number"}}, "required": ["temp_c"], '
                    '"additionalProperties": false}'))
    assert body_of(r, stream=True) == fixture_json("anthropic", "json_schema.request.json")


def test_to_request_minimal() -> None:
    assert body_of(user_request()) == {
        "model": "claude-sonnet-4-5", "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there, gateway!"}]}],
    }
    assert body_of(user_request(stream=True), stream=True)["stream"] is True
    assert body_of(user_request(max_tokens=77))["max_tokens"] == 77


def test_system_and_developer_messages_anywhere_become_system_blocks() -> None:
    r = user_request("Hi")
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, content="Hello")
    r.messages.add(role=types_pb2.ROLE_DEVELOPER, content="Be terse.")
    r.messages.add(role=types_pb2.ROLE_USER, content="Again")
    r.messages.add(role=types_pb2.ROLE_SYSTEM, parts=[chat_pb2.ContentPart(text="No emoji.")])
    body = body_of(r)
    assert body["system"] == [{"type": "text", "text": "Be terse."}, {"type": "text", "text": "No emoji."}]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]


def test_consecutive_turns_of_one_role_are_merged() -> None:
    r = user_request("One")
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, content="Two")
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, content="Three")
    r.messages.add(role=types_pb2.ROLE_USER, content="")  # empty: dropped, not an empty turn
    assert body_of(r)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "One"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Two"}, {"type": "text", "text": "Three"}]},
    ]


@pytest.mark.parametrize(("part", "reason", "param"), [
    (chat_pb2.ContentPart(image_url=chat_pb2.ImageUrl(url="data:image/bmp;base64,Qk0=")),
     Reason.INVALID_REQUEST, "messages[0].content[0].image_url.url"),
    (chat_pb2.ContentPart(image_url=chat_pb2.ImageUrl(url="data:image/png,rawbytes")),
     Reason.INVALID_REQUEST, "messages[0].content[0].image_url.url"),
    (chat_pb2.ContentPart(image_url=chat_pb2.ImageUrl(url="file:///etc/passwd")),
     Reason.INVALID_REQUEST, "messages[0].content[0].image_url.url"),
    (chat_pb2.ContentPart(input_audio=chat_pb2.InputAudio(data="UklGRg==", format="wav")),
     Reason.UNSUPPORTED_PARAMETER, "messages[0].content[0]"),
    (chat_pb2.ContentPart(file=chat_pb2.FileInput(file_id="file-abc123")),
     Reason.UNSUPPORTED_PARAMETER, "messages[0].content[0].file.file_id"),
    (chat_pb2.ContentPart(file=chat_pb2.FileInput(file_data="data:text/csv;base64,YSxi")),
     Reason.INVALID_REQUEST, "messages[0].content[0].file.file_data"),
    (chat_pb2.ContentPart(raw_json='{"type": "future_part"}'), Reason.UNSUPPORTED_PARAMETER, "messages[0].content[0]"),
])
def test_content_anthropic_cannot_take_is_refused(part: chat_pb2.ContentPart, reason: Reason, param: str) -> None:
    r = chat_pb2.CreateChatCompletionRequest(model="client-model")
    r.messages.add(role=types_pb2.ROLE_USER, parts=[part])
    error = refused(r)
    assert (error.reason, error.param) == (reason, param)


@pytest.mark.parametrize("media_type", ["image/jpeg", "image/png", "image/gif", "image/webp", "IMAGE/PNG"])
def test_inline_images_keep_their_data(media_type: str) -> None:
    r = chat_pb2.CreateChatCompletionRequest(model="client-model")
    r.messages.add(role=types_pb2.ROLE_USER, parts=[
        chat_pb2.ContentPart(image_url=chat_pb2.ImageUrl(url=f"data:{media_type};base64,R0lGODlh"))])
    source = body_of(r)["messages"][0]["content"][0]["source"]
    assert source == {"type": "base64", "media_type": media_type.lower(), "data": "R0lGODlh"}


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"city"'])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    r = user_request("Weather?")
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, tool_calls=[chat_pb2.ToolCall(
        id="toolu_1", type="function", function=chat_pb2.FunctionCall(name="get_weather", arguments=arguments))])
    error = refused(r)
    assert (error.reason, error.param) == (Reason.INVALID_REQUEST, "messages[1].tool_calls[0].function.arguments")


def test_tool_results_lead_the_user_turn_they_open() -> None:
    r = user_request("Weather?")
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, tool_calls=[chat_pb2.ToolCall(
        id="toolu_1", type="function", function=chat_pb2.FunctionCall(name="get_weather", arguments="{}"))])
    r.messages.add(role=types_pb2.ROLE_TOOL, tool_call_id="toolu_1", content="")
    r.messages.add(role=types_pb2.ROLE_USER, content="And tomorrow?")
    assert body_of(r)["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1"}, {"type": "text", "text": "And tomorrow?"}]}


@pytest.mark.parametrize(("stop", "expected"), [
    (["END"], ["END"]), (["\n", "STOP", " \t"], ["STOP"]), (["\n\n"], None), ([], None)])
def test_stop_becomes_stop_sequences_without_whitespace_only_ones(stop: list[str], expected: list[str] | None) -> None:
    assert body_of(user_request(stop=stop)).get("stop_sequences") == expected


def test_sampling() -> None:
    assert body_of(user_request(temperature=1.0, top_p=0.5)).get("top_p") is None  # both: temperature wins
    assert body_of(user_request(top_p=0.5))["top_p"] == 0.5
    error = refused(user_request(temperature=1.5))
    assert (error.reason, error.param) == (Reason.INVALID_REQUEST, "temperature")


@pytest.mark.parametrize(("name", "fields"), [
    ("n", {"n": 2}), ("logprobs", {"logprobs": True}), ("top_logprobs", {"top_logprobs": 2}), ("seed", {"seed": 7}),
    ("frequency_penalty", {"frequency_penalty": 0.5}), ("presence_penalty", {"presence_penalty": -1.0}),
    ("logit_bias", {"logit_bias_json": '{"50256": -100}'}),
])
def test_parameters_anthropic_lacks_are_refused_by_name(name: str, fields: dict[str, Any]) -> None:
    error = refused(user_request(**fields))
    assert (error.reason, error.param) == (Reason.UNSUPPORTED_PARAMETER, name) and name in error.message


def test_user_becomes_an_opaque_metadata_user_id() -> None:
    assert body_of(user_request(user="u-8f3a"))["metadata"] == {"user_id": "u-8f3a"}
    assert "metadata" not in body_of(user_request(user="jane@example.com"))
    assert "metadata" not in body_of(user_request(metadata={"team": "a"}, extra_json='{"metadata": {"x": 1}}'))


def test_tools_get_an_object_schema() -> None:
    r = user_request(tools=[chat_pb2.Tool(function=chat_pb2.FunctionDefinition(name="noop", parameters_json="{}")),
                            chat_pb2.Tool(function=chat_pb2.FunctionDefinition(
                                name="loose", parameters_json='{"properties": {"x": {}}}'))])
    assert body_of(r)["tools"] == [
        {"name": "noop", "input_schema": {"type": "object", "properties": {}}},
        {"name": "loose", "input_schema": {"properties": {"x": {}}, "type": "object"}}]
    error = refused(user_request(tools=[chat_pb2.Tool(raw_json='{"type": "custom", "custom": {"name": "g"}}')]))
    assert (error.reason, error.param) == (Reason.UNSUPPORTED_PARAMETER, "tools[0].type")


@pytest.mark.parametrize(("mode", "parallel", "expected"), [
    (chat_pb2.TOOL_CHOICE_MODE_AUTO, None, {"type": "auto"}),
    (chat_pb2.TOOL_CHOICE_MODE_REQUIRED, None, {"type": "any"}),
    (chat_pb2.TOOL_CHOICE_MODE_NONE, None, {"type": "none"}),
    (chat_pb2.TOOL_CHOICE_MODE_FUNCTION, None, {"type": "tool", "name": "get_weather"}),
    (chat_pb2.TOOL_CHOICE_MODE_UNSPECIFIED, None, None),
    (chat_pb2.TOOL_CHOICE_MODE_UNSPECIFIED, False, {"type": "auto", "disable_parallel_tool_use": True}),
    (chat_pb2.TOOL_CHOICE_MODE_REQUIRED, False, {"type": "any", "disable_parallel_tool_use": True}),
    (chat_pb2.TOOL_CHOICE_MODE_FUNCTION, False,
     {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}),
    (chat_pb2.TOOL_CHOICE_MODE_NONE, False, {"type": "none"}),
    (chat_pb2.TOOL_CHOICE_MODE_AUTO, True, {"type": "auto"}),
])
def test_tool_choice(mode: int, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    r = user_request(tools=[weather_tool()])
    if mode:
        r.tool_choice.mode = mode
        r.tool_choice.function_name = "get_weather" if mode == chat_pb2.TOOL_CHOICE_MODE_FUNCTION else ""
    if parallel is not None:
        r.parallel_tool_calls = parallel
    assert body_of(r).get("tool_choice") == expected


def test_tool_choice_without_tools_is_not_sent() -> None:
    r = user_request(parallel_tool_calls=False)
    r.tool_choice.mode = chat_pb2.TOOL_CHOICE_MODE_NONE
    assert "tool_choice" not in body_of(r) and "tools" not in body_of(r)
    r.tool_choice.raw_json = '{"type": "allowed_tools"}'
    assert refused(r).param == "tool_choice"


def json_mode(kind: int = chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT, **fields: Any) -> ChatRequest:
    r = user_request(**fields)
    r.response_format.type = kind
    return r


def test_json_object_is_a_forced_permissive_tool() -> None:
    body = body_of(json_mode())
    assert body["tools"] == [{"name": "json_response", "description": RESPONSE_TOOL_DESCRIPTION,
                              "input_schema": {"type": "object", "additionalProperties": True, "properties": {}}}]
    assert body["tool_choice"] == {"type": "tool", "name": "json_response"}


def test_the_response_tool_never_takes_a_clients_tool_name() -> None:
    r = json_mode(tools=[weather_tool("json_response"), weather_tool("json_response_1")])
    r.tool_choice.mode = chat_pb2.TOOL_CHOICE_MODE_NONE
    assert translate.response_tool_name(r) == "json_response_2"
    assert body_of(r)["tool_choice"] == {"type": "tool", "name": "json_response_2"}


@pytest.mark.parametrize(("mode", "choice", "response_tool"), [
    (chat_pb2.TOOL_CHOICE_MODE_UNSPECIFIED, {"type": "any"}, True),  # call a tool or answer through ours
    (chat_pb2.TOOL_CHOICE_MODE_AUTO, {"type": "any"}, True),
    (chat_pb2.TOOL_CHOICE_MODE_NONE, {"type": "tool", "name": "json_response"}, True),
    (chat_pb2.TOOL_CHOICE_MODE_REQUIRED, {"type": "any"}, False),  # a tool call is the whole answer
])
def test_json_mode_with_client_tools(mode: int, choice: dict[str, Any], response_tool: bool) -> None:
    r = json_mode(tools=[weather_tool()])
    if mode:
        r.tool_choice.mode = mode
    body = body_of(r)
    assert body["tool_choice"] == choice
    assert [t["name"] for t in body["tools"]] == ["get_weather", *(["json_response"] if response_tool else [])]


@pytest.mark.parametrize(("effort", "max_tokens", "budget"), [
    ("minimal", 32000, 1024), ("low", 32000, 1024), ("medium", 32000, 4096), ("high", 32000, 16000),
    ("high", 4096, 2048), ("low", 1500, 1024), ("low", 1024, None), ("none", 32000, None),
])
def test_reasoning_effort_becomes_a_thinking_budget(effort: str, max_tokens: int, budget: int | None) -> None:
    body = body_of(user_request(reasoning_effort=effort, max_completion_tokens=max_tokens, temperature=0.3,
                                top_p=0.97))
    if budget is None:
        assert "thinking" not in body and body["temperature"] == 0.3
        return
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget} and budget < max_tokens
    assert "temperature" not in body and body["top_p"] == 0.97  # thinking takes top_p in 0.95..1 only
    assert "top_p" not in body_of(user_request(reasoning_effort=effort, max_completion_tokens=max_tokens, top_p=0.5))


def test_thinking_is_left_out_where_anthropic_refuses_it() -> None:
    forced = user_request(reasoning_effort="high", tools=[weather_tool()])
    forced.tool_choice.mode = chat_pb2.TOOL_CHOICE_MODE_REQUIRED
    in_tool_loop = user_request("Weather?", reasoning_effort="high", tools=[weather_tool()])
    in_tool_loop.messages.add(role=types_pb2.ROLE_ASSISTANT, tool_calls=[chat_pb2.ToolCall(
        id="toolu_1", type="function", function=chat_pb2.FunctionCall(name="get_weather", arguments="{}"))])
    in_tool_loop.messages.add(role=types_pb2.ROLE_TOOL, tool_call_id="toolu_1", content="21C")
    for request in (forced, json_mode(reasoning_effort="high"), in_tool_loop):
        assert "thinking" not in body_of(request)
    in_tool_loop.messages.add(role=types_pb2.ROLE_USER, content="Thanks. And tomorrow?")  # a new turn
    assert "thinking" in body_of(in_tool_loop)
    assert refused(user_request(reasoning_effort="maximum")).param == "reasoning_effort"


def test_messages_need_a_role_and_something_to_say() -> None:
    r = user_request()
    r.messages.add(content="who am I?")
    assert refused(r).param == "messages[1].role"
    only_system = chat_pb2.CreateChatCompletionRequest(model="client-model")
    only_system.messages.add(role=types_pb2.ROLE_SYSTEM, content="Be terse.")
    assert refused(only_system).param == "messages"


# --- responses ---


def response_of(name: str, request: ChatRequest | None = None) -> chat_pb2.CreateChatCompletionResponse:
    return translate.from_response(fixture_json("anthropic", name), call_for(request or user_request()),
                                   provider=PROVIDER, created=CREATED)


def test_from_response_joins_all_text_blocks_and_counts_cache_as_prompt() -> None:
    assert as_dict(response_of("text.response.json")) == {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "created": str(CREATED), "model": "client-model", "provider": PROVIDER,
        "choices": [{"message": {"role": "ROLE_ASSISTANT", "content": "Hello! How can I help you today?"},
                     "finish_reason": "FINISH_REASON_STOP"}],
        "usage": {"prompt_tokens": "2169", "completion_tokens": "13", "total_tokens": "2182", "cached_tokens": "2048"},
    }


def test_from_response_tool_use() -> None:
    choice = response_of("tool_use.response.json").choices[0]
    assert choice.message.content == "I'll check the weather and the time."
    assert choice.finish_reason == types_pb2.FINISH_REASON_TOOL_CALLS
    assert [(c.id, c.type, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        ("toolu_01A09q90qw90lq917835lq9", "function", "get_weather",
         '{"location":"San Francisco, CA","unit":"celsius"}'),
        ("toolu_01B7s8dF9gH0jK1lM2nB3vC4", "function", "get_time", "{}")]


def test_from_response_thinking_is_reasoning_content() -> None:
    response = response_of("thinking.response.json")
    message = response.choices[0].message
    assert message.content == "27 * 453 = 12,231"
    reasoning = "27 * 453: 27 * 400 = 10800, 27 * 53 = 1431, total 12231."
    assert json.loads(message.extra_json) == {"reasoning_content": reasoning}
    assert response.choices[0].finish_reason == types_pb2.FINISH_REASON_LENGTH
    assert (response.usage.completion_tokens, response.usage.reasoning_tokens) == (88, 71)


def test_from_response_only_tools_means_no_content() -> None:
    body = fixture_json("anthropic", "tool_use.response.json")
    body["content"] = body["content"][1:]
    assert not translate.from_response(body, call_for(user_request())).choices[0].message.HasField("content")


def test_from_response_the_response_tool_input_is_the_content() -> None:
    body = fixture_json("anthropic", "tool_use.response.json")
    body["content"] = [{"type": "tool_use", "id": "toolu_9", "name": "json_response", "input": {"temp_c": 21.5}}]
    choice = translate.from_response(body, call_for(json_mode())).choices[0]
    assert choice.message.content == '{"temp_c":21.5}' and not choice.message.tool_calls
    assert choice.finish_reason == types_pb2.FINISH_REASON_STOP
    # Under tool_choice any, the model may call a client tool and answer in the same turn.
    body["content"].insert(0, {"type": "tool_use", "id": "toolu_8", "name": "get_weather", "input": {"city": "Oslo"}})
    mixed = translate.from_response(body, call_for(json_mode(tools=[weather_tool()]))).choices[0]
    assert mixed.message.content == '{"temp_c":21.5}' and len(mixed.message.tool_calls) == 1
    assert mixed.finish_reason == types_pb2.FINISH_REASON_TOOL_CALLS
    # Without a response format, a tool that happens to have that name is an ordinary call.
    plain = translate.from_response(body, call_for(user_request())).choices[0]
    assert [c.function.name for c in plain.message.tool_calls] == ["get_weather", "json_response"]


@pytest.mark.parametrize(("stop_reason", "finish_reason"), [
    ("end_turn", types_pb2.FINISH_REASON_STOP), ("stop_sequence", types_pb2.FINISH_REASON_STOP),
    ("pause_turn", types_pb2.FINISH_REASON_STOP), (None, types_pb2.FINISH_REASON_STOP),
    ("max_tokens", types_pb2.FINISH_REASON_LENGTH), ("model_context_window_exceeded", types_pb2.FINISH_REASON_LENGTH),
    ("tool_use", types_pb2.FINISH_REASON_TOOL_CALLS), ("refusal", types_pb2.FINISH_REASON_CONTENT_FILTER),
])
def test_finish_reasons(stop_reason: str | None, finish_reason: int) -> None:
    body = fixture_json("anthropic", "tool_use.response.json")
    body["stop_reason"] = stop_reason
    assert translate.from_response(body, call_for(user_request())).choices[0].finish_reason == finish_reason


@pytest.mark.parametrize("stop_reason", ["eos", "stop", 3])
def test_unknown_stop_reason_is_an_error(stop_reason: Any) -> None:
    body = fixture_json("anthropic", "text.response.json")
    body["stop_reason"] = stop_reason
    with pytest.raises(ProviderError) as caught:
        translate.from_response(body, call_for(user_request()))
    assert caught.value.reason == Reason.UPSTREAM_ERROR


@pytest.mark.parametrize("body", [[], {"type": "message"}, {"content": ["hi"]},
                                  {"content": [], "usage": {"input_tokens": "many"}},
                                  {"content": [{"type": "tool_use", "input": [1]}]}])
def test_malformed_responses_are_upstream_errors(body: Any) -> None:
    with pytest.raises(ProviderError) as caught:
        translate.from_response(body, call_for(user_request()))
    assert caught.value.reason == Reason.UPSTREAM_ERROR


def test_an_error_body_with_status_200_raises_it() -> None:
    with pytest.raises(ProviderError) as caught:
        translate.from_response({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                                call_for(user_request()))
    assert caught.value.reason == Reason.UPSTREAM_UNAVAILABLE


# --- streams ---


def sse_events(name: str) -> list[tuple[str, Any]]:
    """(event name, parsed data) of each event of a recorded Anthropic stream."""
    decoder = SseDecoder()
    events = decoder.feed((FIXTURES / "anthropic" / name).read_bytes()) + decoder.close()
    return [(event.event, json.loads(event.data)) for event in events]


def translate_stream(name: str, request: ChatRequest | None = None,
                     ) -> tuple[list[chat_pb2.StreamChatCompletionResponse], ProviderError | None]:
    translator = translate.StreamTranslator(call_for(request or user_request(stream=True)), provider=PROVIDER,
                                            created=CREATED)
    chunks: list[chat_pb2.StreamChatCompletionResponse] = []
    try:
        for event, data in sse_events(name):
            chunks += translator.feed(event, data)
        chunks += translator.finish()
    except ProviderError as error:
        return chunks, error
    return chunks, None


@pytest.mark.parametrize("case", ["basic", "tool_use", "thinking", "usage_in_message_delta", "refusal"])
def test_stream_translates_recorded_events(case: str) -> None:
    chunks, error = translate_stream(f"{case}.sse")
    assert error is None
    assert as_dicts(chunks) == fixture_json("anthropic", f"{case}.expected.json")


def accumulate(chunks: list[chat_pb2.StreamChatCompletionResponse]) -> dict[str, Any]:
    """What an OpenAI SDK makes of the deltas: every string concatenated, tool calls by index."""
    message: dict[str, Any] = {"role": "", "content": "", "tool_calls": {}}
    for delta in (c.delta for chunk in chunks for c in chunk.choices):
        message["role"] += types_pb2.Role.Name(delta.role) if delta.role else ""
        message["content"] += delta.content
        for call in delta.tool_calls:
            entry = message["tool_calls"].setdefault(call.index, {"id": "", "type": "", "name": "", "arguments": ""})
            for key, value in (("id", call.id), ("type", call.type), ("name", call.function.name),
                               ("arguments", call.function.arguments)):
                entry[key] += value
    return message


def test_stream_tool_calls_are_dense_and_say_id_and_name_once() -> None:
    chunks, error = translate_stream("tool_use.sse")
    message = accumulate(chunks)
    assert error is None and message["role"] == "ROLE_ASSISTANT"
    assert message["content"] == "I'll check the current weather in Paris for you."
    assert message["tool_calls"] == {  # Anthropic blocks 1 and 2, OpenAI calls 0 and 1
        0: {"id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "type": "function", "name": "get_weather",
            "arguments": '{"location": "Paris"}'},
        1: {"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "name": "get_time", "arguments": "{}"}}
    assert len({(c.id, c.created) for c in chunks}) == 1


def test_stream_usage_is_replaced_never_added() -> None:
    chunks, _ = translate_stream("usage_in_message_delta.sse")
    usage = chunks[-1].usage
    # message_start: 25 in + 10 written + 5 read, 1 out; the last message_delta: 40 + 12 + 7, 8 out.
    assert (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) == (59, 7, 8)
    assert not chunks[-1].choices and chunks[-2].choices[0].finish_reason == types_pb2.FINISH_REASON_STOP


def test_stream_response_tool_fragments_are_content() -> None:
    request = json_mode(chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, stream=True)
    chunks, error = translate_stream("json_response.sse", request)
    assert error is None and as_dicts(chunks) == fixture_json("anthropic", "json_response.expected.json")
    assert json.loads(accumulate(chunks)["content"]) == {"temp_c": 21.5}
    assert not accumulate(chunks)["tool_calls"]


def test_stream_in_band_error_raises_after_earlier_chunks() -> None:
    chunks, error = translate_stream("in_stream_error.sse")
    assert as_dicts(chunks) == fixture_json("anthropic", "in_stream_error.expected.json")
    assert error is not None and error.reason == Reason.UPSTREAM_UNAVAILABLE
    assert error.retry_after_seconds == OVERLOADED_RETRY_SECONDS


def new_translator(request: ChatRequest | None = None) -> translate.StreamTranslator:
    translator = translate.StreamTranslator(call_for(request or user_request(stream=True)), created=CREATED)
    translator.feed("message_start", {"type": "message_start", "message": {"id": "msg_1", "usage": {}}})
    return translator


def test_stream_ping_and_unknown_events_produce_nothing() -> None:
    translator = new_translator()
    assert translator.feed("ping", {"type": "ping"}) == []
    assert translator.feed("future_event", {"type": "future_event", "x": 1}) == []
    server_tool = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    assert translator.feed("content_block_start", {"type": "content_block_start", "index": 0,
                                                   "content_block": server_tool}) == []
    assert translator.feed("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "citations_delta", "citation": {}}}) == []


def test_stream_unnamed_events_are_dispatched_by_their_type() -> None:
    translator = new_translator()
    translator.feed("message", {"type": "content_block_start", "index": 0,
                                "content_block": {"type": "text", "text": ""}})
    chunks = translator.feed("message", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": "Hi"}})
    assert chunks[0].choices[0].delta.content == "Hi"


def test_stream_cut_before_message_stop_is_an_error() -> None:
    translator = new_translator()
    translator.feed("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                      "usage": {"output_tokens": 3}})
    with pytest.raises(ProviderError) as caught:
        translator.finish()
    assert caught.value.reason == Reason.UPSTREAM_ERROR and not translator.finished


def test_stream_unknown_stop_reason_is_an_error() -> None:
    translator = new_translator()
    translator.feed("message_delta", {"type": "message_delta", "delta": {"stop_reason": "eos"}, "usage": {}})
    with pytest.raises(ProviderError):
        translator.feed("message_stop", {"type": "message_stop"})


@pytest.mark.parametrize(("event", "data"), [
    ("content_block_delta", {"type": "content_block_delta", "index": 5,
                             "delta": {"type": "input_json_delta", "partial_json": "{"}}),
    ("content_block_start", {"type": "content_block_start", "index": -1, "content_block": {"type": "text"}}),
    ("message_start", {"type": "message_start"}),
    ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 1.5}}),
    ("content_block_start", "not an object"),
])
def test_stream_malformed_events_are_upstream_errors(event: str, data: Any) -> None:
    with pytest.raises(ProviderError) as caught:
        new_translator().feed(event, data)
    assert caught.value.reason == Reason.UPSTREAM_ERROR


# --- errors ---

LEAKY_KEY = "sk-ant-api03-AbCdEf0123456789AbCdEf0123456789-XyZ"


def leaky_body(kind: str) -> bytes:
    return json.dumps({"type": "error", "error": {
        "type": kind, "message": f"invalid x-api-key {LEAKY_KEY}; see https://docs.claude.com/en/api/errors"},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}).encode()


@pytest.mark.parametrize(("status", "kind", "reason", "retry_after"), [
    (400, "invalid_request_error", Reason.INVALID_REQUEST, None),
    (401, "authentication_error", Reason.UPSTREAM_ERROR, None),
    (403, "permission_error", Reason.UPSTREAM_ERROR, None),
    (404, "not_found_error", Reason.UPSTREAM_ERROR, None),
    (408, "timeout_error", Reason.UPSTREAM_TIMEOUT, None),
    (413, "request_too_large", Reason.REQUEST_TOO_LARGE, None),
    (429, "rate_limit_error", Reason.UPSTREAM_RATE_LIMITED, 7.0),
    (500, "api_error", Reason.UPSTREAM_UNAVAILABLE, 7.0),
    (504, "timeout_error", Reason.UPSTREAM_TIMEOUT, None),
    (529, "overloaded_error", Reason.UPSTREAM_UNAVAILABLE, 7.0),
    (402, "billing_error", Reason.UPSTREAM_ERROR, None),
    (418, "api_error", Reason.UPSTREAM_ERROR, None),
])
def test_map_error_table_never_leaks_the_key(status: int, kind: str, reason: Reason, retry_after: float | None) -> None:
    error = translate.map_error(status, leaky_body(kind), "7")
    assert (error.reason, error.upstream_status, error.retry_after_seconds) == (reason, status, retry_after)
    for text in (error.message, error.upstream_body, str(error), repr(error)):
        assert "sk-ant" not in text and "AbCdEf0123" not in text and "docs.claude.com" not in text
    if status in (401, 403):
        assert error.message == "upstream authentication failed" and "x-api-key" not in error.upstream_body


def test_map_error_400_keeps_the_scrubbed_message_and_anthropics_field_paths() -> None:
    message = (f"messages.0.content.1.image.source.base64.data: invalid base64 data near {LEAKY_KEY}, "
               "token AKIAIOSFODNN7EXAMPLE9ab.cdEF and https://internal.example/x?key=abc " + "x" * 600)
    error = translate.map_error(400, json.dumps({"type": "error", "error": {
        "type": "invalid_request_error", "message": message}}).encode())
    assert error.message.startswith("messages.0.content.1.image.source.base64.data: invalid base64 data near ")
    for secret in ("sk-ant", "AKIAIOSFODNN7", "internal.example"):
        assert secret not in error.message
    assert len(error.message) <= 500 and error.param is None  # Anthropic's indexes are not the client's
    assert translate.map_error(400, b"<html>Bad Request</html>").message == "the upstream provider rejected the request"


def test_map_error_529_without_retry_after_still_hints() -> None:
    assert translate.map_error(529, leaky_body("overloaded_error")).retry_after_seconds == OVERLOADED_RETRY_SECONDS
    assert translate.map_error(429, leaky_body("rate_limit_error")).retry_after_seconds is None


@pytest.mark.parametrize(("kind", "reason"), [
    ("overloaded_error", Reason.UPSTREAM_UNAVAILABLE), ("api_error", Reason.UPSTREAM_UNAVAILABLE),
    ("rate_limit_error", Reason.UPSTREAM_RATE_LIMITED), ("invalid_request_error", Reason.INVALID_REQUEST),
    ("authentication_error", Reason.UPSTREAM_ERROR), ("request_too_large", Reason.REQUEST_TOO_LARGE),
    ("timeout_error", Reason.UPSTREAM_TIMEOUT), ("something_new", Reason.UPSTREAM_ERROR),
])
def test_in_stream_errors_map_by_type(kind: str, reason: Reason) -> None:
    error = translate.error_in_event({"type": kind, "message": f"boom {LEAKY_KEY}"})
    assert error.reason == reason and error.upstream_status is None
    assert all(LEAKY_KEY[:12] not in text for text in (error.message, error.upstream_body))


def test_translator_modules_are_pure() -> None:
    """The translator and its pieces import neither httpx nor grpc (nor do I/O or logging)."""
    package = Path(translate.__file__).parent
    for name in ("translate.py", "messages.py", "request.py", "response.py", "stream.py", "error_map.py"):
        tree = ast.parse((package / name).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {m for m in imported if m.split(".")[0] in {"httpx", "grpc", "logging", "asyncio"}}, name
