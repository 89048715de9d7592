"""The facade's pure conversions: OpenAI JSON -> gateway.v1 requests, gateway.v1 -> OpenAI JSON."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway_core.pb.gateway.v1 import chat_pb2 as pb
from gateway_core.pb.gateway.v1 import types_pb2
from http_facade.convert_request import DENIED_FIELDS, parse_json_object, to_chat_request
from http_facade.convert_response import FINISH_REASONS, ROLE_NAMES, ChunkEncoder, completion_json, usage_json
from http_facade.errors import ApiError

USER = {"role": "user", "content": "hi"}


def convert(**fields: Any) -> Any:
    payload = {"model": "m", "messages": [USER], **fields}
    return to_chat_request(orjson.loads(orjson.dumps(payload)), "req_1")


def rejected(payload: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        to_chat_request(payload, "req_1")
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    return info.value


# --- JSON -> gRPC --------------------------------------------------------------------


def test_minimal_request_is_unary_with_request_id() -> None:
    call = convert()
    assert isinstance(call.request, pb.CreateChatCompletionRequest)
    assert (call.stream, call.include_usage) == (False, False)
    assert call.request.model == "m"
    assert call.request.request_id == "req_1"
    assert list(call.request.messages) == [pb.Message(role=types_pb2.ROLE_USER, content="hi")]
    assert call.request.extra_json == ""


def test_stream_request_with_usage() -> None:
    call = convert(stream=True, stream_options={"include_usage": True, "include_obfuscation": False})
    assert isinstance(call.request, pb.StreamChatCompletionRequest)
    assert (call.stream, call.include_usage) == (True, True)
    assert call.request.stream_options.include_usage is True
    assert call.request.stream_options.HasField("include_obfuscation")
    assert call.request.stream_options.include_obfuscation is False


def test_stream_null_means_false() -> None:
    assert convert(stream=None).stream is False


def test_every_scalar_field() -> None:
    request = convert(
        temperature=0.7,
        top_p=1,
        n=2,
        max_tokens=100,
        max_completion_tokens=200,
        frequency_penalty=-2,
        presence_penalty=2.0,
        logprobs=True,
        top_logprobs=20,
        seed=-(2**63),
        user="u-1",
        reasoning_effort="low",
        parallel_tool_calls=False,
    ).request
    assert request.temperature == 0.7
    assert request.top_p == 1.0
    assert request.n == 2
    assert request.max_tokens == 100
    assert request.max_completion_tokens == 200
    assert request.frequency_penalty == -2.0
    assert request.presence_penalty == 2.0
    assert request.logprobs is True
    assert request.top_logprobs == 20
    assert request.seed == -(2**63)
    assert request.user == "u-1"
    assert request.reasoning_effort == "low"
    assert request.HasField("parallel_tool_calls") and request.parallel_tool_calls is False


def test_null_optional_fields_are_unset() -> None:
    request = convert(temperature=None, tools=None, stop=None, metadata=None).request
    assert not request.HasField("temperature")
    assert not request.tools and not request.stop and not request.metadata


def test_stop_string_and_list() -> None:
    assert list(convert(stop="END").request.stop) == ["END"]
    assert list(convert(stop=["a", "b", "c", "d"]).request.stop) == ["a", "b", "c", "d"]


def test_metadata_and_logit_bias() -> None:
    request = convert(metadata={"team": "x"}, logit_bias={"50256": -100, "11": 2.5}).request
    assert dict(request.metadata) == {"team": "x"}
    assert request.logit_bias_json == '{"50256":-100,"11":2.5}'


def test_function_tool_keeps_exact_json_numbers() -> None:
    raw = (
        b'{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function",'
        b'"function":{"name":"get_weather","description":"Weather.","strict":true,"parameters":'
        b'{"type":"object","properties":{"days":{"type":"integer","minimum":1,"maximum":10,'
        b'"multipleOf":0.5,"default":12345678901234567}},"required":["days"]}}}]}'
    )
    tool = to_chat_request(parse_json_object(raw), "r").request.tools[0]
    assert tool.type == "function"
    assert tool.function.name == "get_weather"
    assert tool.function.description == "Weather."
    assert tool.function.strict is True
    assert tool.function.parameters_json == (
        '{"type":"object","properties":{"days":{"type":"integer","minimum":1,"maximum":10,'
        '"multipleOf":0.5,"default":12345678901234567}},"required":["days"]}'
    )


def test_function_tool_without_parameters() -> None:
    function = convert(tools=[{"type": "function", "function": {"name": "f"}}]).request.tools[0].function
    assert function.parameters_json == "" and not function.HasField("strict")


def test_other_tool_types_travel_as_raw_json() -> None:
    tool = convert(
        tools=[{"type": "custom", "custom": {"name": "x", "format": {"type": "text"}}}]
    ).request.tools[0]
    assert tool.type == "custom"
    assert orjson.loads(tool.raw_json) == {
        "type": "custom",
        "custom": {"name": "x", "format": {"type": "text"}},
    }


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("none", pb.TOOL_CHOICE_MODE_NONE),
        ("auto", pb.TOOL_CHOICE_MODE_AUTO),
        ("required", pb.TOOL_CHOICE_MODE_REQUIRED),
    ],
)
def test_tool_choice_strings(value: str, mode: int) -> None:
    assert convert(tool_choice=value).request.tool_choice == pb.ToolChoice(mode=mode)


def test_tool_choice_objects() -> None:
    named = convert(tool_choice={"type": "function", "function": {"name": "f"}}).request.tool_choice
    assert named == pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_FUNCTION, function_name="f")
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}
    other = convert(tool_choice=allowed).request.tool_choice
    assert other.mode == pb.TOOL_CHOICE_MODE_UNSPECIFIED
    assert orjson.loads(other.raw_json) == allowed


def test_response_formats() -> None:
    assert (
        convert(response_format={"type": "text"}).request.response_format.type == pb.RESPONSE_FORMAT_TYPE_TEXT
    )
    assert convert(response_format={"type": "json_object"}).request.response_format.type == (
        pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT
    )
    fmt = convert(
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "out",
                "description": "d",
                "strict": True,
                "schema": {"type": "object", "maxProperties": 3},
            },
        }
    ).request.response_format
    assert fmt.type == pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    assert fmt.json_schema == pb.JsonSchemaFormat(
        name="out", description="d", schema_json='{"type":"object","maxProperties":3}', strict=True
    )


def test_unknown_fields_pass_through_and_denied_fields_are_dropped() -> None:
    denied = {name: "x" for name in DENIED_FIELDS}
    request = convert(
        store=True, service_tier="flex", top_k=40, web_search_options={"a": 1}, **denied
    ).request
    assert orjson.loads(request.extra_json) == {
        "store": True,
        "service_tier": "flex",
        "top_k": 40,
        "web_search_options": {"a": 1},
    }
    assert {
        "api_key",
        "api_base",
        "base_url",
        "extra_headers",
        "headers",
        "organization",
        "timeout",
        "deployment_id",
        "custom_llm_provider",
        "user_api_key",
    } == DENIED_FIELDS


def test_only_denied_fields_leave_no_extra_json() -> None:
    assert convert(api_key="sk-upstream", base_url="http://evil").request.extra_json == ""


def test_denied_fields_are_dropped_however_they_are_spelt() -> None:
    spellings = {"API_KEY": "x", "Api-Base": "x", " base_url ": "x", "EXTRA-HEADERS": {}}
    assert convert(**spellings).request.extra_json == ""


def test_every_role_and_message_field() -> None:
    messages = [
        {"role": "system", "content": "s", "name": "sys"},
        {"role": "developer", "content": [{"type": "text", "text": "d"}]},
        {"role": "user", "content": "u"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "thinking...",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "assistant", "content": "no", "refusal": "I can't"},
    ]
    got = list(convert(messages=messages).request.messages)
    assert got[0] == pb.Message(role=types_pb2.ROLE_SYSTEM, content="s", name="sys")
    assert got[1] == pb.Message(role=types_pb2.ROLE_DEVELOPER, parts=[pb.ContentPart(text="d")])
    assert got[2] == pb.Message(role=types_pb2.ROLE_USER, content="u")
    assert not got[3].HasField("content")
    assert list(got[3].tool_calls) == [
        pb.ToolCall(id="call_1", type="function", function=pb.FunctionCall(name="f", arguments='{"a":1}'))
    ]
    assert got[3].extra_json == '{"reasoning_content":"thinking..."}'
    assert got[4] == pb.Message(role=types_pb2.ROLE_TOOL, content="42", tool_call_id="call_1")
    assert got[5].refusal == "I can't"


def test_assistant_may_omit_content_with_tool_calls() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    message = convert(messages=[{"role": "assistant", "tool_calls": [call]}]).request.messages[0]
    assert not message.HasField("content")


def test_every_content_part() -> None:
    parts = [
        {"type": "text", "text": "t"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
        {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"}},
        {"type": "file", "file": {"file_id": "file-1"}},
        {"type": "refusal", "refusal": "no"},
        {"type": "video_url", "video_url": {"url": "https://v"}},
    ]
    got = list(convert(messages=[{"role": "user", "content": parts}]).request.messages[0].parts)
    assert got[:7] == [
        pb.ContentPart(text="t"),
        pb.ContentPart(image_url=pb.ImageUrl(url="data:image/png;base64,AAAA", detail="low")),
        pb.ContentPart(image_url=pb.ImageUrl(url="https://x/y.png")),
        pb.ContentPart(input_audio=pb.InputAudio(data="UklG", format="wav")),
        pb.ContentPart(file=pb.FileInput(file_data="data:application/pdf;base64,JVBE", filename="a.pdf")),
        pb.ContentPart(file=pb.FileInput(file_id="file-1")),
        pb.ContentPart(refusal="no"),
    ]
    assert orjson.loads(got[7].raw_json) == parts[7]


def test_parse_json_object() -> None:
    assert parse_json_object(b'{"a":1}') == {"a": 1}
    with pytest.raises(ApiError) as info:
        parse_json_object(b'{"model": ')
    assert info.value.status == 400 and "could not parse the JSON body" in info.value.message
    with pytest.raises(ApiError) as info:
        parse_json_object(b"[1, 2]")
    assert info.value.status == 400 and "must be a JSON object" in info.value.message


CALL = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def top(**fields: Any) -> dict[str, Any]:
    """A valid request plus the given top-level fields."""
    return {"model": "m", "messages": [USER], **fields}


def msgs(*messages: Any) -> dict[str, Any]:
    """A request with exactly these messages."""
    return {"model": "m", "messages": list(messages)}


def part(content_part: Any) -> dict[str, Any]:
    """A request whose one user message has this single content part."""
    return msgs({"role": "user", "content": [content_part]})


def assistant(**fields: Any) -> dict[str, Any]:
    """A request whose one message is an assistant turn with these fields."""
    return msgs({"role": "assistant", **fields})


def tool(function: Any) -> dict[str, Any]:
    """A request with one function tool."""
    return top(tools=[{"type": "function", "function": function}])


def schema_format(json_schema: Any) -> dict[str, Any]:
    return top(response_format={"type": "json_schema", "json_schema": json_schema})


MISSING, TYPE, VALUE = "missing_required_parameter", "invalid_type", "invalid_value"


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"messages": [USER]}, "model", MISSING),
        ({"model": 5, "messages": [USER]}, "model", TYPE),
        ({"model": "", "messages": [USER]}, "model", VALUE),
        ({"model": "m"}, "messages", MISSING),
        ({"model": "m", "messages": {}}, "messages", TYPE),
        ({"model": "m", "messages": []}, "messages", "empty_array"),
        (msgs("hi"), "messages[0]", TYPE),
        (msgs({"content": "x"}), "messages[0].role", MISSING),
        (msgs({"role": "bot", "content": "x"}), "messages[0].role", VALUE),
        (msgs({"role": 1, "content": "x"}), "messages[0].role", TYPE),
        (msgs(USER, {"role": "user"}), "messages[1].content", MISSING),
        (msgs({"role": "user", "content": None}), "messages[0].content", TYPE),
        (assistant(content=None), "messages[0].content", TYPE),
        (msgs({"role": "user", "content": 3}), "messages[0].content", TYPE),
        (msgs({"role": "user", "content": []}), "messages[0].content", "empty_array"),
        (part({"text": "x"}), "messages[0].content[0].type", MISSING),
        (part({"type": "text"}), "messages[0].content[0].text", MISSING),
        (part({"type": "image_url", "image_url": "u"}), "messages[0].content[0].image_url", TYPE),
        (part({"type": "image_url", "image_url": {}}), "messages[0].content[0].image_url.url", MISSING),
        (
            part({"type": "input_audio", "input_audio": {"data": "x"}}),
            "messages[0].content[0].input_audio.format",
            MISSING,
        ),
        (part({"type": "file", "file": {"file_id": 7}}), "messages[0].content[0].file.file_id", TYPE),
        (msgs({"role": "tool", "content": "x"}), "messages[0].tool_call_id", MISSING),
        (msgs({**USER, "name": 1}), "messages[0].name", TYPE),
        (msgs({**USER, "tool_calls": [CALL]}), "messages[0].tool_calls", None),
        (assistant(tool_calls={}), "messages[0].tool_calls", TYPE),
        (assistant(tool_calls=[{**CALL, "id": None}]), "messages[0].tool_calls[0].id", MISSING),
        (assistant(tool_calls=[{**CALL, "type": "custom"}]), "messages[0].tool_calls[0].type", VALUE),
        (
            assistant(tool_calls=[{**CALL, "function": {"name": "f", "arguments": {}}}]),
            "messages[0].tool_calls[0].function.arguments",
            TYPE,
        ),
        (top(stream=1), "stream", TYPE),
        (top(stream_options={"include_usage": True}), "stream_options", None),
        (top(stream=False, stream_options={}), "stream_options", None),
        (top(stream=True, stream_options={"include_usage": 1}), "stream_options.include_usage", TYPE),
        (top(temperature=2.5), "temperature", "decimal_above_max_value"),
        (top(temperature=-0.1), "temperature", "decimal_below_min_value"),
        (top(temperature="1"), "temperature", TYPE),
        (top(temperature=True), "temperature", TYPE),
        (top(top_p=1.5), "top_p", "decimal_above_max_value"),
        (top(n=0), "n", "integer_below_min_value"),
        (top(n=129), "n", "integer_above_max_value"),
        (top(n=1.0), "n", TYPE),
        (top(max_tokens=0), "max_tokens", "integer_below_min_value"),
        (top(max_tokens=True), "max_tokens", TYPE),
        (top(max_completion_tokens=2**63), "max_completion_tokens", "integer_above_max_value"),
        (top(frequency_penalty=-2.1), "frequency_penalty", "decimal_below_min_value"),
        (top(presence_penalty=3), "presence_penalty", "decimal_above_max_value"),
        (top(top_logprobs=21), "top_logprobs", "integer_above_max_value"),
        (top(seed=1.5), "seed", TYPE),
        (top(logprobs=1), "logprobs", TYPE),
        (top(parallel_tool_calls="yes"), "parallel_tool_calls", TYPE),
        (top(user=5), "user", TYPE),
        (top(reasoning_effort=["low"]), "reasoning_effort", TYPE),
        (top(stop=5), "stop", TYPE),
        (top(stop=["a", "b", "c", "d", "e"]), "stop", "array_above_max_length"),
        (top(stop=["a", 1]), "stop[1]", TYPE),
        (top(tools={}), "tools", TYPE),
        (top(tools=[{"function": {"name": "f"}}]), "tools[0].type", MISSING),
        (top(tools=[{"type": "function"}]), "tools[0].function", MISSING),
        (tool({"name": "bad name"}), "tools[0].function.name", VALUE),
        (tool({"name": "x" * 65}), "tools[0].function.name", VALUE),
        (tool({"name": "f", "parameters": []}), "tools[0].function.parameters", TYPE),
        (tool({"name": "f", "strict": "true"}), "tools[0].function.strict", TYPE),
        (tool({"name": "f", "description": 1}), "tools[0].function.description", TYPE),
        (top(tool_choice="always"), "tool_choice", VALUE),
        (top(tool_choice=1), "tool_choice", TYPE),
        (top(tool_choice={"type": "function", "function": {}}), "tool_choice.function.name", MISSING),
        (top(response_format="json"), "response_format", TYPE),
        (top(response_format={"type": "yaml"}), "response_format.type", VALUE),
        (top(response_format={"type": "json_schema"}), "response_format.json_schema", MISSING),
        (schema_format({"name": "a b"}), "response_format.json_schema.name", VALUE),
        (schema_format({"name": "a", "schema": 1}), "response_format.json_schema.schema", TYPE),
        (schema_format({"name": "a", "strict": 1}), "response_format.json_schema.strict", TYPE),
        (top(metadata={"k": 1}), "metadata.k", TYPE),
        (top(metadata={"k": "v" * 513}), "metadata.k", VALUE),
        (top(metadata={str(i): "v" for i in range(17)}), "metadata", VALUE),
        (top(logit_bias=[1]), "logit_bias", TYPE),
    ],
)
def test_validation_errors_name_the_param(payload: dict[str, Any], param: str, code: str | None) -> None:
    error = rejected(payload)
    assert (error.param, error.code) == (param, code)
    assert error.message


def test_stream_options_without_stream_uses_openais_message() -> None:
    error = rejected({"model": "m", "messages": [USER], "stream_options": {"include_usage": True}})
    assert error.message == "The 'stream_options' parameter is only allowed when 'stream' is enabled."


def test_error_messages_read_like_openais() -> None:
    assert rejected({"model": "m", "messages": [USER], "temperature": 3}).message == (
        "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 3 instead."
    )
    assert rejected({"model": "m"}).message == "Missing required parameter: 'messages'."
    assert rejected({"model": "m", "messages": [USER], "n": "2"}).message == (
        "Invalid type for 'n': expected an integer, but got a string instead."
    )


# --- gRPC -> JSON --------------------------------------------------------------------


def full_usage() -> types_pb2.Usage:
    return types_pb2.Usage(
        prompt_tokens=19,
        completion_tokens=10,
        total_tokens=29,
        cached_tokens=4,
        reasoning_tokens=3,
        cost_micros=9,
    )


USAGE_JSON = {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 3},
}


def test_completion_json_matches_openai_shape() -> None:
    response = pb.CreateChatCompletionResponse(
        id="chatcmpl-1",
        created=1741569952,
        model="gpt-4o",
        usage=full_usage(),
        system_fingerprint="fp_1",
        service_tier="default",
        provider="openai",
        choices=[
            pb.Choice(
                index=0,
                finish_reason=types_pb2.FINISH_REASON_STOP,
                message=pb.Message(role=types_pb2.ROLE_ASSISTANT, content="Hello!"),
            )
        ],
    )
    assert completion_json(response) == orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1741569952,
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE_JSON,
            "service_tier": "default",
            "system_fingerprint": "fp_1",
        }
    )


def test_completion_with_tool_calls_logprobs_refusal_and_extra_fields() -> None:
    message = pb.Message(
        role=types_pb2.ROLE_ASSISTANT,
        refusal="nope",
        extra_json='{"reasoning_content":"hmm","role":"x"}',
        tool_calls=[
            pb.ToolCall(id="call_abc", type="function", function=pb.FunctionCall(name="f", arguments="{}"))
        ],
    )
    response = pb.CreateChatCompletionResponse(
        id="c",
        created=1,
        model="m",
        choices=[
            pb.Choice(
                index=0,
                message=message,
                finish_reason=types_pb2.FINISH_REASON_TOOL_CALLS,
                logprobs_json='{"content":[{"token":"a","logprob":-0.5}]}',
            )
        ],
    )
    body = orjson.loads(completion_json(response))
    assert body["choices"][0] == {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None,
            "refusal": "nope",
            "tool_calls": [
                {"id": "call_abc", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
            "reasoning_content": "hmm",
        },
        "logprobs": {"content": [{"token": "a", "logprob": -0.5}]},
        "finish_reason": "tool_calls",
    }
    assert body["usage"] is None
    assert "system_fingerprint" not in body and "service_tier" not in body


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        (types_pb2.FINISH_REASON_STOP, "stop"),
        (types_pb2.FINISH_REASON_LENGTH, "length"),
        (types_pb2.FINISH_REASON_TOOL_CALLS, "tool_calls"),
        (types_pb2.FINISH_REASON_CONTENT_FILTER, "content_filter"),
        (types_pb2.FINISH_REASON_FUNCTION_CALL, "function_call"),
        (types_pb2.FINISH_REASON_UNSPECIFIED, None),
    ],
)
def test_finish_reasons(reason: int, text: str | None) -> None:
    response = pb.CreateChatCompletionResponse(
        choices=[pb.Choice(finish_reason=reason, message=pb.Message(content=""))]
    )
    assert orjson.loads(completion_json(response))["choices"][0]["finish_reason"] == text


def stream_message(
    *deltas: pb.ChoiceDelta, usage: types_pb2.Usage | None = None
) -> pb.StreamChatCompletionResponse:
    message = pb.StreamChatCompletionResponse(id="chatcmpl-9", created=77, model="m", choices=deltas)
    if usage is not None:
        message.usage.CopyFrom(usage)
    return message


def decode(events: list[bytes]) -> list[dict[str, Any]]:
    for event in events:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    return [orjson.loads(event[6:]) for event in events]


def test_chunks_pin_id_created_model_and_shape_deltas() -> None:
    first = stream_message(pb.ChoiceDelta(index=0, delta=pb.Delta(role=types_pb2.ROLE_ASSISTANT, content="")))
    first.system_fingerprint = "fp_9"
    encoder = ChunkEncoder(first, include_usage=False)
    later = stream_message(
        pb.ChoiceDelta(index=0, delta=pb.Delta(content="Hi", extra_json='{"reasoning_content":"r"}'))
    )
    later.id, later.created = "other", 5
    [one] = decode(encoder.events(first))
    [two] = decode(encoder.events(later))
    assert one == {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 77,
        "model": "m",
        "system_fingerprint": "fp_9",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }
    assert (two["id"], two["created"]) == ("chatcmpl-9", 77)
    assert two["choices"][0]["delta"] == {"content": "Hi", "reasoning_content": "r"}
    assert "usage" not in two


def test_finish_chunk_and_logprobs() -> None:
    message = stream_message(
        pb.ChoiceDelta(
            index=0,
            delta=pb.Delta(),
            finish_reason=types_pb2.FINISH_REASON_LENGTH,
            logprobs_json='{"content":[]}',
        )
    )
    [chunk] = decode(ChunkEncoder(message, include_usage=False).events(message))
    assert chunk["choices"] == [
        {"index": 0, "delta": {}, "logprobs": {"content": []}, "finish_reason": "length"}
    ]


def test_tool_call_deltas_have_exact_key_sets() -> None:
    first = stream_message(
        pb.ChoiceDelta(
            index=0,
            delta=pb.Delta(
                tool_calls=[
                    pb.ToolCallDelta(
                        index=0,
                        id="call_abc",
                        type="function",
                        function=pb.FunctionCallDelta(name="get_weather", arguments=""),
                    )
                ]
            ),
        )
    )
    later = stream_message(
        pb.ChoiceDelta(
            index=0,
            delta=pb.Delta(
                tool_calls=[pb.ToolCallDelta(index=0, function=pb.FunctionCallDelta(arguments='{"city":'))]
            ),
        )
    )
    encoder = ChunkEncoder(first, include_usage=False)
    [a] = decode(encoder.events(first))
    [b] = decode(encoder.events(later))
    assert a["choices"][0]["delta"] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_abc",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    }
    assert b["choices"][0]["delta"] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}


def test_usage_chunk_only_when_asked() -> None:
    first = stream_message(pb.ChoiceDelta(index=0, delta=pb.Delta(content="x")))
    final = stream_message(usage=full_usage())
    with_usage = ChunkEncoder(first, include_usage=True)
    [chunk] = decode(with_usage.events(first))
    assert chunk["usage"] is None
    [usage_chunk] = decode(with_usage.events(final))
    assert usage_chunk == {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 77,
        "model": "m",
        "choices": [],
        "usage": USAGE_JSON,
    }
    assert ChunkEncoder(first, include_usage=False).events(final) == []


def test_message_with_choices_and_usage_becomes_two_chunks() -> None:
    message = stream_message(pb.ChoiceDelta(index=0, delta=pb.Delta(content="x")), usage=full_usage())
    chunks = decode(ChunkEncoder(message, include_usage=True).events(message))
    assert [len(c["choices"]) for c in chunks] == [1, 0]
    assert chunks[0]["usage"] is None and chunks[1]["usage"] == USAGE_JSON


def test_no_modelled_field_is_a_denied_one() -> None:
    # to_chat_request checks the denied spellings only for fields it does not model.
    from http_facade.convert_request import _MODELLED, _denied

    assert not [key for key in _MODELLED if _denied(key)]


def test_chunk_encoder_encode_is_the_events_joined() -> None:
    first = pb.StreamChatCompletionResponse(
        id="c1", created=5, model="m", system_fingerprint="fp", service_tier="default",
        choices=[pb.ChoiceDelta(index=0, delta=pb.Delta(role=types_pb2.ROLE_ASSISTANT, content=""))],
    )
    tool = pb.StreamChatCompletionResponse(choices=[pb.ChoiceDelta(index=0, logprobs_json='{"content":[]}', delta=pb.Delta(
        tool_calls=[pb.ToolCallDelta(index=1, id="call_1", type="function",
                                     function=pb.FunctionCallDelta(name="f", arguments="{"))]))])
    last = pb.StreamChatCompletionResponse(
        choices=[pb.ChoiceDelta(index=0, delta=pb.Delta(), finish_reason=types_pb2.FINISH_REASON_STOP)],
        usage=types_pb2.Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3),
    )
    only_usage = pb.StreamChatCompletionResponse(usage=types_pb2.Usage(prompt_tokens=1, total_tokens=1))
    text = pb.StreamChatCompletionResponse(choices=[pb.ChoiceDelta(index=0, delta=pb.Delta(content="t"))])
    for include_usage in (False, True):
        encoder = ChunkEncoder(first, include_usage=include_usage)
        for message in (first, tool, text, last, only_usage, pb.StreamChatCompletionResponse()):
            assert encoder.encode(message) == b"".join(encoder.events(message))


@pytest.mark.parametrize("choice", [
    pb.ChoiceDelta(index=0, delta=pb.Delta(content="plain")),
    pb.ChoiceDelta(index=3, delta=pb.Delta(content='quotes " and \\ and \n and \u00e9 and \U0001f600')),
    pb.ChoiceDelta(index=0, delta=pb.Delta(content='quotes " and \\ and \n and \u00e9 and \U0001f600')),
    pb.ChoiceDelta(index=1, delta=pb.Delta(content="second choice")),
    pb.ChoiceDelta(index=0, delta=pb.Delta(content="x", role=types_pb2.ROLE_UNSPECIFIED)),
    pb.ChoiceDelta(index=0, delta=pb.Delta(refusal="no")),
    pb.ChoiceDelta(index=0, delta=pb.Delta(role=types_pb2.ROLE_ASSISTANT)),
    pb.ChoiceDelta(index=2, delta=pb.Delta(role=types_pb2.ROLE_TOOL, content="t"),
                   finish_reason=types_pb2.FINISH_REASON_LENGTH),
    pb.ChoiceDelta(index=0, delta=pb.Delta(role=99, content="unknown role")),  # type: ignore[arg-type]
    pb.ChoiceDelta(index=0, delta=pb.Delta(), finish_reason=99),  # type: ignore[arg-type]
    pb.ChoiceDelta(index=0, delta=pb.Delta(), finish_reason=types_pb2.FINISH_REASON_TOOL_CALLS),
    pb.ChoiceDelta(index=0, delta=pb.Delta(role=types_pb2.ROLE_ASSISTANT, content=""), logprobs_json='{"c":[]}'),
    pb.ChoiceDelta(index=0, delta=pb.Delta(content="")),
    pb.ChoiceDelta(index=0, delta=pb.Delta()),
    pb.ChoiceDelta(index=0, delta=pb.Delta(role=types_pb2.ROLE_ASSISTANT, content="first")),
    pb.ChoiceDelta(index=0, delta=pb.Delta(content="x", refusal="")),
    pb.ChoiceDelta(index=0, delta=pb.Delta(content="x", extra_json='{"reasoning_content":"r"}')),
    pb.ChoiceDelta(index=0, delta=pb.Delta(content="x"), finish_reason=types_pb2.FINISH_REASON_STOP),
    pb.ChoiceDelta(index=0, delta=pb.Delta(content="x"), logprobs_json='{"content":[]}'),
    pb.ChoiceDelta(index=0, delta=pb.Delta(content="x", tool_calls=[pb.ToolCallDelta(index=0, id="c")])),
])
@pytest.mark.parametrize("include_usage", [False, True])
def test_encode_gives_the_bytes_of_the_general_path(choice: pb.ChoiceDelta, include_usage: bool) -> None:
    """encode's short path for text-only chunks writes exactly what events() (dicts + orjson) writes."""
    message = stream_message(choice)
    encoder = ChunkEncoder(message, include_usage=include_usage)
    assert encoder.encode(message) == b"".join(encoder.events(message))


@pytest.mark.parametrize("usage", [
    types_pb2.Usage(),
    types_pb2.Usage(prompt_tokens=12, completion_tokens=16, total_tokens=28, cost_micros=12),
    types_pb2.Usage(prompt_tokens=2**62, completion_tokens=-1, total_tokens=2**63 - 1, cached_tokens=7,
                    reasoning_tokens=9, estimated=True),
])
def test_usage_chunk_gives_the_bytes_of_the_general_path(usage: types_pb2.Usage) -> None:
    """The usage chunk's short path (integers formatted in) writes exactly what usage_json + orjson writes."""
    first = stream_message(pb.ChoiceDelta(index=0, delta=pb.Delta(role=types_pb2.ROLE_ASSISTANT, content="")))
    encoder = ChunkEncoder(first, include_usage=True)
    final = pb.StreamChatCompletionResponse(id=first.id, usage=usage)
    assert encoder.encode(final) == b"".join(encoder.events(final))
    [event] = encoder.events(final)
    assert orjson.loads(event.removeprefix(b"data: "))["usage"] == usage_json(usage)


@pytest.mark.parametrize("role", [*ROLE_NAMES, 99])
@pytest.mark.parametrize("finish", [*FINISH_REASONS, types_pb2.FINISH_REASON_UNSPECIFIED, 99])
def test_role_and_finish_chunks_give_the_bytes_of_the_general_path(role: int, finish: int) -> None:
    """A stream's first and last chunks (role, text, finish reason; any index) take the short path too:
    the same bytes as the dicts through orjson, unknown roles and finish reasons included."""
    for delta in (pb.Delta(role=role), pb.Delta(role=role, content="tok \u00e9"), pb.Delta()):  # type: ignore[arg-type]
        for index in (0, 2):
            message = stream_message(pb.ChoiceDelta(index=index, delta=delta, finish_reason=finish))  # type: ignore[arg-type]
            encoder = ChunkEncoder(message, include_usage=True)
            assert encoder.encode(message) == b"".join(encoder.events(message))
