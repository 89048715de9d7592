"""gateway.v1 request -> OpenAI chat.completions JSON body. Pure: no I/O, no logging.

Fields are sent only when the client set them (proto3 presence), so upstream
defaults stay upstream defaults. JSON carried as text (schemas, raw parts,
extra fields) is parsed back exactly: integers keep every digit and numbers a
float cannot hold are embedded verbatim.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway_core.errors import invalid_request
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import ChatRequest, UpstreamCall
from gateway_core.providers.openai.adapt import adapt
from gateway_core.providers.openai.vendors import PASSTHROUGH, Dialect

ROLE_NAMES: Mapping[int, str] = {
    types_pb2.ROLE_SYSTEM: "system",
    types_pb2.ROLE_USER: "user",
    types_pb2.ROLE_ASSISTANT: "assistant",
    types_pb2.ROLE_TOOL: "tool",
    # OpenAI-compatible upstreams get developer as developer; mapping it to
    # system is for providers without the role.
    types_pb2.ROLE_DEVELOPER: "developer",
}
_TOOL_CHOICE_MODES: Mapping[int, str] = {
    chat_pb2.TOOL_CHOICE_MODE_NONE: "none",
    chat_pb2.TOOL_CHOICE_MODE_AUTO: "auto",
    chat_pb2.TOOL_CHOICE_MODE_REQUIRED: "required",
}
_RESPONSE_FORMATS: Mapping[int, str] = {
    chat_pb2.RESPONSE_FORMAT_TYPE_TEXT: "text",
    chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT: "json_object",
    chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: "json_schema",
}
# Optional scalars copied under the same name when present.
_SCALARS = (
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "seed", "parallel_tool_calls",
    "frequency_penalty", "presence_penalty", "logprobs", "top_logprobs",
)
# Where and how the gateway calls upstream is never the client's to change, nor
# (through extra_json) how much output it asks for beyond what was held for.
_PROTECTED = frozenset({"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n"})
# Connection and credential settings some SDK-shaped proxies honour in a body
# (LiteLLM's api_base SSRF, litellm#24952): stripped here too, because a gRPC
# caller reaches this code without passing the facade's own filter.
_SMUGGLED = frozenset({
    "api_key", "api_base", "base_url", "extra_headers", "headers", "organization", "deployment_id",
    "custom_llm_provider", "timeout", "user_api_key",
})
_INT64 = range(-(2**63), 2**64)
_SCALAR_NAMES = frozenset(_SCALARS)
# The fields _add_options reads: it has something to add only when the request has one of them.
_OPTION_FIELDS = frozenset({
    "stop", "user", "tools", "tool_choice", "response_format", "logit_bias_json", "reasoning_effort", "metadata",
})


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a setattr call per field (once per request)
class PreparedRequest:
    """A request body ready for one upstream, and what was left out of it. Never changed."""

    body: dict[str, Any]
    # Unsupported parameters the client set that the dialect said to drop.
    dropped: tuple[str, ...] = ()


def to_request(call: UpstreamCall, *, stream: bool, dialect: Dialect = PASSTHROUGH) -> dict[str, Any]:
    """The JSON body of POST /chat/completions for this call, in dialect."""
    return prepare_request(call, stream=stream, dialect=dialect).body


def prepare_request(call: UpstreamCall, *, stream: bool, dialect: Dialect = PASSTHROUGH) -> PreparedRequest:
    """The body for this call in dialect, with the parameters dropped on the way.

    Raises INVALID_REQUEST for JSON fields that do not parse and
    UNSUPPORTED_PARAMETER when the dialect refuses a parameter the client set.
    """
    body = _openai_body(call, stream=stream)
    dropped = adapt(body, dialect)
    return PreparedRequest(body, dropped)


def _openai_body(call: UpstreamCall, *, stream: bool) -> dict[str, Any]:
    """The body as OpenAI itself takes it."""
    request = call.request
    body: dict[str, Any] = {
        "model": call.upstream_model,
        "messages": [_message(m, f"messages[{i}]") for i, m in enumerate(request.messages)],
    }
    # One pass over the fields the request has (ListFields: set optionals, non-empty others, in field
    # number order, which is _SCALARS' order) instead of a HasField per scalar and a test per option.
    has_options = False
    for field, value in request.ListFields():
        name = field.name
        if name in _SCALAR_NAMES:
            body[name] = value
        elif name in _OPTION_FIELDS:
            has_options = True
    if has_options:  # most requests set none of them
        _add_options(body, request)
    if stream:
        # Usage is always asked for: metering needs it whatever the client wants.
        options: dict[str, Any] = {"include_usage": True}
        if request.stream_options.HasField("include_obfuscation"):
            options["include_obfuscation"] = request.stream_options.include_obfuscation
        body["stream"] = True
        body["stream_options"] = options
    extra = _object(request.extra_json, "extra_json")
    for key, value in extra.items():
        if key not in _PROTECTED and key not in body and not _smuggled(key):
            body[key] = value
    return body


def _smuggled(key: str) -> bool:
    """Whether key names a connection or credential setting, however it is spelt."""
    return key.strip().lower().replace("-", "_") in _SMUGGLED


def _add_options(body: dict[str, Any], request: ChatRequest) -> None:
    if request.stop:
        body["stop"] = list(request.stop)
    if request.user:
        body["user"] = request.user
    if request.tools:
        body["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(request.tools)]
    if request.HasField("tool_choice"):
        choice = _tool_choice(request.tool_choice)
        if choice is not None:
            body["tool_choice"] = choice
    if request.HasField("response_format"):
        response_format = _response_format(request.response_format)
        if response_format is not None:
            body["response_format"] = response_format
    if request.logit_bias_json:
        body["logit_bias"] = _object(request.logit_bias_json, "logit_bias")
    if request.reasoning_effort:
        body["reasoning_effort"] = request.reasoning_effort
    if request.metadata:
        body["metadata"] = dict(sorted(request.metadata.items()))


def _message(message: chat_pb2.Message, where: str) -> dict[str, Any]:
    role = ROLE_NAMES.get(message.role)
    if role is None:
        raise invalid_request("message role is missing or unknown", param=f"{where}.role")
    out: dict[str, Any] = {"role": role}
    if message.parts:
        out["content"] = [_part(p, f"{where}.content[{i}]") for i, p in enumerate(message.parts)]
    else:
        out["content"] = message.content if message.HasField("content") else None
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": c.type or "function",
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in message.tool_calls
        ]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.HasField("refusal"):
        out["refusal"] = message.refusal
    # Vendor fields such as DeepSeek's reasoning_content must go back as they
    # came; the modelled fields above win over a same-named extra.
    if message.extra_json:  # most messages carry none: no call, no param text
        for key, value in _object(message.extra_json, f"{where}.extra_json").items():
            out.setdefault(key, value)
    return out


def _part(part: chat_pb2.ContentPart, where: str) -> Any:
    kind = part.WhichOneof("part")
    if kind == "text":
        return {"type": "text", "text": part.text}
    if kind == "image_url":
        image: dict[str, str] = {"url": part.image_url.url}
        if part.image_url.detail:
            image["detail"] = part.image_url.detail
        return {"type": "image_url", "image_url": image}
    if kind == "input_audio":
        audio = {"data": part.input_audio.data, "format": part.input_audio.format}
        return {"type": "input_audio", "input_audio": audio}
    if kind == "file":
        fields = (("file_data", part.file.file_data), ("file_id", part.file.file_id), ("filename", part.file.filename))
        return {"type": "file", "file": {k: v for k, v in fields if v}}
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.refusal}
    if kind == "raw_json":
        return _object(part.raw_json, where)
    raise invalid_request("content part is empty", param=where)


def _tool(tool: chat_pb2.Tool, where: str) -> Any:
    if tool.raw_json:
        return _object(tool.raw_json, where)
    if tool.type not in ("", "function") or not tool.HasField("function"):
        raise invalid_request("tool must be a function or raw JSON", param=f"{where}.type")
    function: dict[str, Any] = {"name": tool.function.name}
    if tool.function.description:
        function["description"] = tool.function.description
    if tool.function.parameters_json:
        function["parameters"] = _object(tool.function.parameters_json, f"{where}.function.parameters")
    if tool.function.HasField("strict"):
        function["strict"] = tool.function.strict
    return {"type": "function", "function": function}


def _tool_choice(choice: chat_pb2.ToolChoice) -> Any:
    if choice.raw_json:
        return loads_exact(choice.raw_json, "tool_choice")
    if choice.mode == chat_pb2.TOOL_CHOICE_MODE_FUNCTION:
        return {"type": "function", "function": {"name": choice.function_name}}
    return _TOOL_CHOICE_MODES.get(choice.mode)


def _response_format(response_format: chat_pb2.ResponseFormat) -> dict[str, Any] | None:
    kind = _RESPONSE_FORMATS.get(response_format.type)
    if kind is None:
        return None
    if kind != "json_schema":
        return {"type": kind}
    schema = response_format.json_schema
    spec: dict[str, Any] = {"name": schema.name}
    if schema.description:
        spec["description"] = schema.description
    if schema.schema_json:
        spec["schema"] = _object(schema.schema_json, "response_format.json_schema.schema")
    if schema.HasField("strict"):
        spec["strict"] = schema.strict
    return {"type": "json_schema", "json_schema": spec}


def _object(text: str, param: str) -> dict[str, Any]:
    """A JSON object given as text ("" is an empty object)."""
    if not text:
        return {}
    value = loads_exact(text, param)
    if not isinstance(value, dict):
        raise invalid_request("must be a JSON object", param=param)
    return value


def loads_exact(text: str, param: str) -> Any:
    """JSON text to Python values that serialize back to the same numbers.

    Integers beyond 64 bits and floats beyond a double's range (which orjson
    would refuse or turn into null) stay as their original text.
    """
    try:
        return json.loads(text, parse_int=_exact_int, parse_float=_exact_float, parse_constant=_no_constant)
    except ValueError:
        raise invalid_request("is not valid JSON", param=param) from None


def _exact_int(text: str) -> Any:
    try:
        value = int(text)
    except ValueError:  # more digits than Python converts by default
        return orjson.Fragment(text)
    return value if value in _INT64 else orjson.Fragment(text)


def _exact_float(text: str) -> Any:
    value = float(text)
    mantissa = text.lower().partition("e")[0]
    underflowed = value == 0.0 and any(digit in mantissa for digit in "123456789")
    return value if math.isfinite(value) and not underflowed else orjson.Fragment(text)


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")
