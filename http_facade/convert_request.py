"""OpenAI chat-completions JSON in, gateway.v1 request message out: pure, no I/O.

Validation is by hand, in OpenAI's own words where we know them, so a bad
request fails here with a 400 naming the exact `param` ("messages[0].role")
instead of travelling to the core. Fields the gateway does not model travel on
as JSON text (`extra_json`, `raw_json`), except the few that would let a client
steer where or how the gateway calls upstream.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway_core.pb.gateway.v1 import chat_pb2 as pb
from http_facade.convert_messages import add_messages
from http_facade.errors import invalid_request
from http_facade.validate import (
    boolean,
    integer,
    invalid_value,
    json_object,
    missing,
    number,
    optional_string,
    required_object,
    required_string,
    string,
    wrong_type,
)

ChatRequest = pb.CreateChatCompletionRequest | pb.StreamChatCompletionRequest

# Connection and credential settings: honoured by some SDK-shaped proxies, but
# here they would let a caller redirect upstream traffic or leak the operator's key.
DENIED_FIELDS = frozenset(
    {
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
    }
)

_TOOL_CHOICE_MODES = {
    "none": pb.TOOL_CHOICE_MODE_NONE,
    "auto": pb.TOOL_CHOICE_MODE_AUTO,
    "required": pb.TOOL_CHOICE_MODE_REQUIRED,
}
_RESPONSE_FORMATS = {
    "text": pb.RESPONSE_FORMAT_TYPE_TEXT,
    "json_object": pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT,
    "json_schema": pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
}
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_INT64_MAX = 2**63 - 1
_NUMBERS = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "frequency_penalty": (-2.0, 2.0),
    "presence_penalty": (-2.0, 2.0),
}
_INTEGERS = {
    "n": (1, 128),
    "max_tokens": (1, _INT64_MAX),
    "max_completion_tokens": (1, _INT64_MAX),
    "top_logprobs": (0, 20),
    "seed": (-_INT64_MAX - 1, _INT64_MAX),
}
_BOOLEANS = ("logprobs", "parallel_tool_calls")
_STRINGS = ("user", "reasoning_effort")
_HANDLED_FIRST = ("model", "messages", "stream", "stream_options")


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a setattr call per field (once per request)
class ChatCall:
    """A validated chat request and how its answer must be delivered. Never changed."""

    request: ChatRequest
    stream: bool
    include_usage: bool


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying why it is not one."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(
            f"We could not parse the JSON body of your request ({exc}). "
            "The API expects a JSON object as the request body."
        ) from None
    if not isinstance(payload, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_type")
    return payload


def to_chat_request(payload: dict[str, Any], request_id: str) -> ChatCall:
    """Validates an OpenAI request object into the core's request message."""
    raw_stream = payload.get("stream")
    stream = False if raw_stream is None else boolean(raw_stream, "stream")
    request: ChatRequest = pb.StreamChatCompletionRequest() if stream else pb.CreateChatCompletionRequest()
    request.request_id = request_id
    request.model = _model(payload.get("model"))
    add_messages(payload.get("messages"), request.messages)
    include_usage = _stream_options(request, payload.get("stream_options"), stream)
    extra: dict[str, Any] = {}
    for key, value in payload.items():
        if key in _MODELLED:  # never a denied name (a unit test checks), so no spelling check
            if value is not None:  # null means "not given", as OpenAI treats it
                _set_field(request, key, value)
        elif key not in _HANDLED_FIRST and not _denied(key):
            extra[key] = value  # a field newer than us: OpenAI-compatible upstreams get it as is
    if extra:
        request.extra_json = orjson.dumps(extra).decode()
    return ChatCall(request, stream, include_usage)


def _denied(key: str) -> bool:
    """Whether key names a connection or credential setting, however it is spelt ("API-Base")."""
    return key.strip().lower().replace("-", "_") in DENIED_FIELDS


def _model(value: Any) -> str:
    if value is None:
        raise missing("model")
    model = string(value, "model")
    if not model:
        raise invalid_request("Invalid 'model': empty string. Expected a model id.", "model", "invalid_value")
    return model


def _stream_options(request: ChatRequest, value: Any, stream: bool) -> bool:
    if value is None:
        return False
    if not stream or not isinstance(request, pb.StreamChatCompletionRequest):
        raise invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    options = json_object(value, "stream_options")
    include_usage = options.get("include_usage")
    if include_usage is not None:
        request.stream_options.include_usage = boolean(include_usage, "stream_options.include_usage")
    obfuscation = options.get("include_obfuscation")
    if obfuscation is not None:
        request.stream_options.include_obfuscation = boolean(
            obfuscation, "stream_options.include_obfuscation"
        )
    return request.stream_options.include_usage


def _set_tools(request: ChatRequest, value: Any) -> None:
    if not isinstance(value, list):
        raise wrong_type("tools", "an array", value)
    for i, item in enumerate(value):
        _tool(item, f"tools[{i}]", request.tools)


def _tool(value: Any, param: str, into: Any) -> None:
    """Validates one tool and adds it to into (the request's `tools`), built in place, not copied in."""
    tool = json_object(value, param)
    kind = tool.get("type")
    if kind is None:
        raise missing(f"{param}.type")
    kind = string(kind, f"{param}.type")
    if kind != "function":
        into.add(type=kind, raw_json=orjson.dumps(tool).decode())
        return
    function = required_object(tool, "function", param)
    where = f"{param}.function"
    name = _function_name(required_string(function, "name", where), f"{where}.name")
    description = optional_string(function, "description", where)
    parameters = function.get("parameters")
    # Exact JSON text: a schema's 1 must stay 1, not become 1.0 as in a Struct.
    parameters_json = (
        None if parameters is None else orjson.dumps(json_object(parameters, f"{where}.parameters")).decode()
    )
    strict = function.get("strict")
    strict = None if strict is None else boolean(strict, f"{where}.strict")
    added: pb.Tool = into.add(type=kind, function={"name": name, "description": description})
    definition = added.function
    if parameters_json is not None:
        definition.parameters_json = parameters_json
    if strict is not None:
        definition.strict = strict


def _set_tool_choice(request: ChatRequest, value: Any) -> None:
    if isinstance(value, str):
        mode = _TOOL_CHOICE_MODES.get(value)
        if mode is None:
            raise invalid_value("tool_choice", value, "'none', 'auto', and 'required'")
        request.tool_choice.mode = mode
        return
    choice = json_object(value, "tool_choice")
    if choice.get("type") != "function":
        request.tool_choice.raw_json = orjson.dumps(choice).decode()  # allowed_tools, custom, ...
        return
    function = required_object(choice, "function", "tool_choice")
    request.tool_choice.mode = pb.TOOL_CHOICE_MODE_FUNCTION
    request.tool_choice.function_name = required_string(function, "name", "tool_choice.function")


def _set_response_format(request: ChatRequest, value: Any) -> None:
    fmt = json_object(value, "response_format")
    kind_name = required_string(fmt, "type", "response_format")
    kind = _RESPONSE_FORMATS.get(kind_name)
    if kind is None:
        raise invalid_value("response_format.type", kind_name, "'text', 'json_object', and 'json_schema'")
    request.response_format.type = kind
    if kind != pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        return
    spec = required_object(fmt, "json_schema", "response_format")
    where = "response_format.json_schema"
    target = request.response_format.json_schema
    target.name = _function_name(required_string(spec, "name", where), f"{where}.name")
    target.description = optional_string(spec, "description", where)
    if (schema := spec.get("schema")) is not None:
        target.schema_json = orjson.dumps(json_object(schema, f"{where}.schema")).decode()
    if (strict := spec.get("strict")) is not None:
        target.strict = boolean(strict, f"{where}.strict")


def _set_stop(request: ChatRequest, value: Any) -> None:
    if isinstance(value, str):
        request.stop.append(value)
        return
    if not isinstance(value, list):
        raise wrong_type("stop", "one of a string or array of strings", value)
    if len(value) > 4:
        raise invalid_request(
            f"Invalid 'stop': array too long. Expected an array with maximum length 4, "
            f"but got an array with length {len(value)} instead.",
            "stop",
            "array_above_max_length",
        )
    request.stop.extend(string(s, f"stop[{i}]") for i, s in enumerate(value))


def _set_metadata(request: ChatRequest, value: Any) -> None:
    metadata = json_object(value, "metadata")
    if len(metadata) > 16:
        raise invalid_request(
            "Invalid 'metadata': too many properties (at most 16).", "metadata", "invalid_value"
        )
    for key, item in metadata.items():
        text = string(item, f"metadata.{key}")
        if len(key) > 64 or len(text) > 512:
            raise invalid_request(
                f"Invalid 'metadata.{key}': keys are at most 64 and values at most 512 characters.",
                f"metadata.{key}",
                "invalid_value",
            )
        request.metadata[key] = text


def _set_logit_bias(request: ChatRequest, value: Any) -> None:
    request.logit_bias_json = orjson.dumps(json_object(value, "logit_bias")).decode()


def _function_name(name: str, param: str) -> str:
    if _NAME.fullmatch(name) is None:
        raise invalid_request(
            f"Invalid '{param}': string does not match pattern. "
            "Expected a string that matches the pattern '^[a-zA-Z0-9_-]{1,64}$'.",
            param,
            "invalid_value",
        )
    return name


def _set_field(request: ChatRequest, key: str, value: Any) -> None:
    """Validates one modelled top-level field onto request."""
    if key in _NUMBERS:
        setattr(request, key, number(value, key, *_NUMBERS[key]))
    elif key in _INTEGERS:
        setattr(request, key, integer(value, key, *_INTEGERS[key]))
    elif key in _BOOLEANS:
        setattr(request, key, boolean(value, key))
    elif key in _STRINGS:
        setattr(request, key, string(value, key))
    else:
        _SETTERS[key](request, value)


_SETTERS: dict[str, Callable[[ChatRequest, Any], None]] = {
    "tools": _set_tools,
    "tool_choice": _set_tool_choice,
    "response_format": _set_response_format,
    "stop": _set_stop,
    "metadata": _set_metadata,
    "logit_bias": _set_logit_bias,
}
_MODELLED = frozenset(_SETTERS) | frozenset(_NUMBERS) | frozenset(_INTEGERS) | {*_BOOLEANS, *_STRINGS}