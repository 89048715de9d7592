"""OpenAI chat `messages` JSON in, gateway.v1 Messages out: pure, no I/O.

Content may be a string, a list of typed parts or (for an assistant turn that
only called tools) null. Part types the gateway does not model, and message
fields it does not know (DeepSeek's `reasoning_content`), travel on as JSON
text so OpenAI-compatible upstreams receive them unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway_core.pb.gateway.v1 import chat_pb2 as pb
from gateway_core.pb.gateway.v1 import types_pb2
from http_facade.errors import invalid_request
from http_facade.validate import (
    invalid_value,
    json_object,
    missing,
    optional_string,
    required_object,
    required_string,
    string,
    wrong_type,
)

ROLES: dict[str, types_pb2.Role] = {
    "system": types_pb2.ROLE_SYSTEM,
    "user": types_pb2.ROLE_USER,
    "assistant": types_pb2.ROLE_ASSISTANT,
    "tool": types_pb2.ROLE_TOOL,
    "developer": types_pb2.ROLE_DEVELOPER,
}
_MESSAGE_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "refusal"})


def add_messages(value: Any, into: Any) -> None:
    """Validates the `messages` array into Message protos (at least one), added to into.

    into is the request's repeated `messages` field: each message is built in
    place there, not built apart and copied in (extend() copies every message,
    content and all, which cost more than the validation).
    """
    if value is None:
        raise missing("messages")
    if not isinstance(value, list):
        raise wrong_type("messages", "an array", value)
    if not value:
        raise invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "messages",
            "empty_array",
        )
    for i, item in enumerate(value):
        _message(item, f"messages[{i}]", into)


def _message(value: Any, param: str, into: Any) -> None:
    fields = json_object(value, param)
    role_name = fields.get("role")
    if role_name is None:
        raise missing(f"{param}.role")
    role = ROLES.get(string(role_name, f"{param}.role"))
    if role is None:
        raise invalid_value(
            f"{param}.role", role_name, "'system', 'assistant', 'user', 'tool', and 'developer'"
        )
    message: pb.Message = into.add(role=role)
    tool_calls = fields.get("tool_calls")
    if tool_calls is not None:
        if role != types_pb2.ROLE_ASSISTANT:
            raise invalid_request(
                f"Invalid parameter: '{param}.tool_calls' is only allowed "
                "for messages with role 'assistant'.",
                f"{param}.tool_calls",
            )
        _add_tool_calls(tool_calls, f"{param}.tool_calls", message.tool_calls)
    _content(message, fields, param)
    if (name := fields.get("name")) is not None:
        message.name = string(name, f"{param}.name")
    if (refusal := fields.get("refusal")) is not None:
        message.refusal = string(refusal, f"{param}.refusal")
    tool_call_id = fields.get("tool_call_id")
    if tool_call_id is not None:
        message.tool_call_id = string(tool_call_id, f"{param}.tool_call_id")
    elif role == types_pb2.ROLE_TOOL:
        raise missing(f"{param}.tool_call_id")
    if not fields.keys() <= _MESSAGE_FIELDS:  # e.g. DeepSeek's reasoning_content, which must round-trip
        extra = {k: v for k, v in fields.items() if k not in _MESSAGE_FIELDS}
        message.extra_json = orjson.dumps(extra).decode()


def _content(message: pb.Message, fields: dict[str, Any], param: str) -> None:
    content = fields.get("content")
    if isinstance(content, str):
        message.content = content
    elif isinstance(content, list):
        if not content:
            raise invalid_request(
                f"Invalid '{param}.content': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                f"{param}.content",
                "empty_array",
            )
        for i, p in enumerate(content):
            _part(p, f"{param}.content[{i}]", message.parts)
    elif content is not None:
        raise wrong_type(f"{param}.content", "one of a string or array of objects", content)
    elif not (message.role == types_pb2.ROLE_ASSISTANT and (message.tool_calls or "function_call" in fields)):
        # Only an assistant turn that called tools may leave content out (JSON null).
        if "content" not in fields:
            raise missing(f"{param}.content")
        raise wrong_type(f"{param}.content", "one of a string or array of objects", content)


def _part(value: Any, param: str, into: Any) -> None:
    """Validates one content part and adds it to into (a message's `parts`), built in place:
    a part built apart and copied in costs a copy of its data (a multi-megabyte image data URL)."""
    part = json_object(value, param)
    kind = part.get("type")
    if kind is None:
        raise missing(f"{param}.type")
    kind = string(kind, f"{param}.type")
    if kind == "text":
        into.add(text=required_string(part, "text", param))
    elif kind == "refusal":
        into.add(refusal=required_string(part, "refusal", param))
    elif kind == "image_url":
        image = required_object(part, "image_url", param)
        url = required_string(image, "url", f"{param}.image_url")
        detail = optional_string(image, "detail", f"{param}.image_url")
        into.add(image_url={"url": url, "detail": detail})
    elif kind == "input_audio":
        audio = required_object(part, "input_audio", param)
        data = required_string(audio, "data", f"{param}.input_audio")
        audio_format = required_string(audio, "format", f"{param}.input_audio")
        into.add(input_audio={"data": data, "format": audio_format})
    elif kind == "file":
        file = required_object(part, "file", param)
        sub = f"{param}.file"
        into.add(
            file={
                "file_data": optional_string(file, "file_data", sub),
                "file_id": optional_string(file, "file_id", sub),
                "filename": optional_string(file, "filename", sub),
            }
        )
    else:
        into.add(raw_json=orjson.dumps(part).decode())


def _add_tool_calls(value: Any, param: str, into: Any) -> None:
    """Validates an assistant turn's `tool_calls` into into (its message's field), built in place."""
    if not isinstance(value, list):
        raise wrong_type(param, "an array", value)
    for i, item in enumerate(value):
        where = f"{param}[{i}]"
        call = json_object(item, where)
        call_type = optional_string(call, "type", where) or "function"
        if call_type != "function":
            raise invalid_value(f"{where}.type", call_type, "'function'")
        function = required_object(call, "function", where)
        call_id = required_string(call, "id", where)
        name = required_string(function, "name", f"{where}.function")
        arguments = required_string(function, "arguments", f"{where}.function")
        into.add(id=call_id, type=call_type, function={"name": name, "arguments": arguments})
