"""The built-in mock provider: deterministic, honours the request, streams like OpenAI."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gateway_core.errors import GatewayError, Reason
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import ChatRequest
from gateway_core.providers.mock import MockProvider
from gateway_core.tokens import estimate_prompt_tokens, estimate_text_tokens
from tests.providers_support import as_dicts, call_for, user_request

WEATHER = chat_pb2.Tool(type="function", function=chat_pb2.FunctionDefinition(
    name="get_weather",
    parameters_json=json.dumps({
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1},
            "when": {"type": "object", "properties": {"day": {"type": "string"}, "hour": {"type": "integer"}},
                     "required": ["day"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "detailed": {"type": ["boolean", "null"]},
            "ignored": {"type": "string"},
        },
        "required": ["city", "unit", "days", "when", "tags", "detailed"],
    }),
))
CLOCK = chat_pb2.Tool(type="function", function=chat_pb2.FunctionDefinition(name="get_time"))


async def complete(request: ChatRequest, model: str = "chat") -> chat_pb2.CreateChatCompletionResponse:
    return await MockProvider("mock").complete(call_for(request, model))


async def stream(request: ChatRequest, model: str = "chat") -> list[chat_pb2.StreamChatCompletionResponse]:
    return [chunk async for chunk in MockProvider("mock").stream(call_for(request, model))]


async def test_chat_replies_are_deterministic_and_prompt_dependent() -> None:
    first = await complete(user_request("Tell me about lighthouses"))
    again = await complete(user_request("Tell me about lighthouses"))
    other = await complete(user_request("Something else entirely"))
    assert first.choices[0].message.content == again.choices[0].message.content
    assert "lighthouses" in first.choices[0].message.content
    assert other.choices[0].message.content != first.choices[0].message.content
    assert first.id.startswith("chatcmpl-mock-") and first.model == "client-model" and first.provider == "mock"
    assert first.choices[0].finish_reason == types_pb2.FINISH_REASON_STOP


async def test_echo_repeats_the_last_user_message() -> None:
    request = user_request("first")
    request.messages.add(role=types_pb2.ROLE_ASSISTANT, content="ok")
    request.messages.add(role=types_pb2.ROLE_USER, parts=[chat_pb2.ContentPart(text="Hello "),
                                                          chat_pb2.ContentPart(text="again")])
    response = await complete(request, "echo")
    assert response.choices[0].message.content == "Hello again"


async def test_usage_is_estimated_from_request_and_reply() -> None:
    request = user_request("How long is a piece of string?")
    response = await complete(request)
    usage = response.usage
    assert usage.prompt_tokens == estimate_prompt_tokens(request)
    assert usage.completion_tokens == estimate_text_tokens(response.choices[0].message.content)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens and not usage.estimated


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_token_limit_truncates_with_length(field: str) -> None:
    limit: dict[str, Any] = {field: 4}
    response = await complete(user_request("one two three four five six seven eight nine ten", **limit), "echo")
    choice = response.choices[0]
    assert choice.finish_reason == types_pb2.FINISH_REASON_LENGTH
    assert choice.message.content == "one two three four"
    assert response.usage.completion_tokens <= 4


async def test_token_limit_cuts_inside_a_giant_word() -> None:
    response = await complete(user_request("x" * 10_000, max_tokens=3), "echo")
    assert response.choices[0].message.content == "x" * 12
    assert response.choices[0].finish_reason == types_pb2.FINISH_REASON_LENGTH


async def test_stop_sequences_cut_before_the_first_match() -> None:
    response = await complete(user_request("alpha beta STOP gamma END delta", stop=["END", "STOP"]), "echo")
    assert response.choices[0].message.content == "alpha beta "
    assert response.choices[0].finish_reason == types_pb2.FINISH_REASON_STOP


async def test_n_gives_n_indexed_choices() -> None:
    response = await complete(user_request("pick one", n=3))
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert all(c.message.content for c in response.choices)
    assert response.usage.completion_tokens == sum(estimate_text_tokens(c.message.content) for c in response.choices)


async def test_function_tools_are_called_with_schema_arguments() -> None:
    request = user_request("Weather in Paris?")
    request.tools.extend([WEATHER, CLOCK])
    response = await complete(request)
    choice = response.choices[0]
    assert choice.finish_reason == types_pb2.FINISH_REASON_TOOL_CALLS
    assert not choice.message.HasField("content")
    (call,) = choice.message.tool_calls
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.id) and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {
        "city": "example city", "unit": "celsius", "days": 1, "when": {"day": "example day"},
        "tags": ["example tags"], "detailed": True,
    }
    assert (await complete(request)).choices[0].message.tool_calls[0].id == call.id
    assert response.usage.completion_tokens == estimate_text_tokens(call.function.name + call.function.arguments)


async def test_tool_choice_selects_or_disables_tools() -> None:
    request = user_request("What time is it?")
    request.tools.extend([WEATHER, CLOCK])
    request.tool_choice.mode, request.tool_choice.function_name = chat_pb2.TOOL_CHOICE_MODE_FUNCTION, "get_time"
    called = (await complete(request)).choices[0].message.tool_calls[0]
    assert (called.function.name, called.function.arguments) == ("get_time", "{}")
    request.tool_choice.function_name = "no_such_tool"
    with pytest.raises(GatewayError) as caught:
        await complete(request)
    assert caught.value.reason == Reason.INVALID_REQUEST and caught.value.param == "tool_choice"
    request.tool_choice.mode = chat_pb2.TOOL_CHOICE_MODE_NONE
    assert (await complete(request)).choices[0].finish_reason == types_pb2.FINISH_REASON_STOP


async def test_after_a_tool_result_it_answers_in_text() -> None:
    request = user_request("Weather?")
    request.tools.append(WEATHER)
    request.messages.add(role=types_pb2.ROLE_ASSISTANT, tool_calls=[chat_pb2.ToolCall(
        id="call_1", type="function", function=chat_pb2.FunctionCall(name="get_weather", arguments="{}"))])
    request.messages.add(role=types_pb2.ROLE_TOOL, tool_call_id="call_1", content='{"temp_c": 21}')
    choice = (await complete(request)).choices[0]
    assert choice.finish_reason == types_pb2.FINISH_REASON_STOP
    assert "get_weather" in choice.message.content and '{"temp_c": 21}' in choice.message.content


async def test_stream_chunk_sequence_for_text() -> None:
    chunks = await stream(user_request("Hello there, gateway!", stream=True), "echo")
    assert len({(c.id, c.created, c.model, c.provider) for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-mock-") and chunks[0].model == "client-model"
    shape = [{k: v for k, v in d.items() if k not in ("id", "created", "model", "provider")} for d in as_dicts(chunks)]
    assert shape == [
        {"choices": [{"delta": {"role": "ROLE_ASSISTANT", "content": ""}}]},
        {"choices": [{"delta": {"content": "Hello"}}]},
        {"choices": [{"delta": {"content": " there,"}}]},
        {"choices": [{"delta": {"content": " gateway!"}}]},
        {"choices": [{"delta": {}, "finish_reason": "FINISH_REASON_STOP"}]},
        {"usage": {"prompt_tokens": "13", "completion_tokens": "6", "total_tokens": "19"}},
    ]


async def test_stream_tool_call_deltas_follow_openai() -> None:
    request = user_request("Weather in Paris?", stream=True)
    request.tools.append(WEATHER)
    chunks = await stream(request)
    whole = (await complete(user_request("Weather in Paris?", tools=[WEATHER]))).choices[0].message.tool_calls[0]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0] == chat_pb2.Delta(role=types_pb2.ROLE_ASSISTANT)
    first = deltas[1].tool_calls[0]
    assert (first.index, first.id, first.type, first.function.name) == (0, whole.id, "function", "get_weather")
    assert first.function.HasField("arguments") and first.function.arguments == ""
    fragments = [d.tool_calls[0] for d in deltas[2:-1]]
    assert len(fragments) > 1 and all(f.index == 0 and not f.id and not f.function.HasField("name") for f in fragments)
    assert "".join(f.function.arguments for f in fragments) == whole.function.arguments
    assert chunks[-2].choices[0].finish_reason == types_pb2.FINISH_REASON_TOOL_CALLS and deltas[-1] == chat_pb2.Delta()
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens > 0


async def test_stream_matches_complete_for_every_choice() -> None:
    request = user_request("Tell me something nice", n=2, stream=True)
    chunks = await stream(request)
    whole = await complete(chat_pb2.CreateChatCompletionRequest.FromString(request.SerializeToString()))
    texts = ["", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content
    assert texts == [c.message.content for c in whole.choices]
    assert chunks[-1].usage == whole.usage


async def test_stream_can_be_closed_early() -> None:
    iterator = MockProvider("mock").stream(call_for(user_request(stream=True)))
    assert (await anext(iterator)).choices[0].delta.role == types_pb2.ROLE_ASSISTANT
    await iterator.aclose()  # type: ignore[attr-defined]
