"""Semantic checks of a chat request, for every caller (the facade and direct gRPC).

The facade already rejects malformed JSON shapes; these checks are the core's
own, so a gRPC client that bypasses the facade meets the same rules. Each
failure names the parameter at fault, in OpenAI's `param` style.
"""

from __future__ import annotations

import orjson

from gateway_core.errors import invalid_request
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import ChatRequest

MAX_MESSAGES = 100_000
MAX_N = 128
MAX_STOP_SEQUENCES = 4
_ASSISTANT = types_pb2.ROLE_ASSISTANT
_TOOL = types_pb2.ROLE_TOOL
_ROLES = frozenset(types_pb2.Role.values()) - {types_pb2.ROLE_UNSPECIFIED}


def validate_request(request: ChatRequest) -> None:
    """Raises an INVALID_REQUEST GatewayError for the first problem found."""
    if not request.model:
        raise invalid_request("you must provide a model parameter", "model")
    messages = request.messages
    if not messages:
        raise invalid_request("'messages' must contain at least one message", "messages")
    if len(messages) > MAX_MESSAGES:
        raise invalid_request(f"'messages' has more than {MAX_MESSAGES} messages", "messages")
    for i, message in enumerate(messages):
        _validate_message(message, i)
    _validate_sampling(request)
    if request.tools:
        for i, tool in enumerate(request.tools):
            _validate_tool(tool, f"tools[{i}]")
    if request.tool_choice.mode == chat_pb2.TOOL_CHOICE_MODE_FUNCTION and not request.tool_choice.function_name:
        raise invalid_request("a named tool_choice needs a function name", "tool_choice")
    if request.response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        _require_json_object(request.response_format.json_schema.schema_json, "response_format.json_schema.schema")
    # (Empty text is no JSON to check: most requests carry neither, so no call for them.)
    if request.logit_bias_json:
        _require_json_object(request.logit_bias_json, "logit_bias")
    if request.extra_json:
        _require_json_object(request.extra_json, "extra_json")


def _validate_message(message: chat_pb2.Message, index: int) -> None:
    # The `param` text (messages[i]...) is built only for an error: most messages have none.
    role = message.role
    if role not in _ROLES:
        raise invalid_request("each message needs a valid role", f"messages[{index}].role")
    has_content = message.HasField("content") or len(message.parts) > 0
    if role == _TOOL and not message.tool_call_id:
        raise invalid_request("messages with role 'tool' need a tool_call_id", f"messages[{index}].tool_call_id")
    tool_calls = message.tool_calls
    if not has_content and not (role == _ASSISTANT and (tool_calls or message.HasField("refusal"))):
        raise invalid_request("message content must not be null", f"messages[{index}].content")
    if tool_calls:
        if role != _ASSISTANT:
            raise invalid_request("only assistant messages can have tool_calls", f"messages[{index}].tool_calls")
        for j, call in enumerate(tool_calls):
            if not call.id or not call.function.name:
                raise invalid_request(
                    "each tool call needs an id and a function name", f"messages[{index}].tool_calls[{j}]"
                )
    if message.extra_json:
        _require_json_object(message.extra_json, f"messages[{index}]")


_SAMPLING_RANGES: tuple[tuple[str, float, float], ...] = (
    ("temperature", 0.0, 2.0),
    ("top_p", 0.0, 1.0),
    ("frequency_penalty", -2.0, 2.0),
    ("presence_penalty", -2.0, 2.0),
    ("top_logprobs", 0, 20),
    ("n", 1, MAX_N),
)


def _validate_sampling(request: ChatRequest) -> None:
    for name, low, high in _SAMPLING_RANGES:
        if request.HasField(name):
            value = getattr(request, name)
            if not low <= value <= high:  # also rejects NaN
                raise invalid_request(f"'{name}' must be between {low:g} and {high:g}", name)
    for name in ("max_tokens", "max_completion_tokens"):
        if request.HasField(name) and getattr(request, name) < 1:
            raise invalid_request(f"'{name}' must be at least 1", name)
    if len(request.stop) > MAX_STOP_SEQUENCES:
        raise invalid_request(f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences", "stop")


def _validate_tool(tool: chat_pb2.Tool, param: str) -> None:
    if tool.raw_json:
        _require_json_object(tool.raw_json, param)
        return
    if tool.type != "function" or not tool.function.name:
        raise invalid_request("each tool needs type 'function' and a function name", param)
    _require_json_object(tool.function.parameters_json, f"{param}.function.parameters")


def _require_json_object(text: str, param: str) -> None:
    if not text:
        return
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise invalid_request("must be valid JSON", param) from None
    if not isinstance(value, dict):
        raise invalid_request("must be a JSON object", param)
