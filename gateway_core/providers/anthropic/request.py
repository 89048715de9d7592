"""gateway.v1 request -> Anthropic Messages JSON body (POST /v1/messages). Pure: no I/O, no logging.

Each OpenAI field either has an Anthropic counterpart, is a no-op that is
dropped, or is refused with a 400 naming it (UNSUPPORTED_PARAMETER): a client
is better told than silently given something else. OpenAI-dialect extras
(`extra_json`, stored-completion `metadata`) are never forwarded. JSON
response formats ride on a synthetic tool whose input is the answer; the
response side finds it again with `response_tool_name`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway_core.errors import invalid_request
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.anthropic.messages import to_system_and_messages, unsupported
from gateway_core.providers.base import ChatRequest, UpstreamCall
from gateway_core.providers.openai.request import loads_exact

# The core always sets an output limit (apply_output_limit); this only covers a
# request that reaches the translator some other way. Anthropic requires one.
DEFAULT_MAX_TOKENS = 4096
MAX_TEMPERATURE = 1.0
RESPONSE_TOOL_NAME = "json_response"
RESPONSE_TOOL_DESCRIPTION = "Give your final answer by calling this tool: its input is the response document."
PERMISSIVE_OBJECT: Mapping[str, Any] = {"type": "object", "additionalProperties": True, "properties": {}}
NO_PARAMETERS: Mapping[str, Any] = {"type": "object", "properties": {}}
# Anthropic's thinking budget must be >= 1024 and < max_tokens
# [anthropic-sdk-python types/thinking_config_enabled_param.py].
MIN_THINKING_BUDGET = 1024
THINKING_BUDGETS: Mapping[str, int] = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384, "xhigh": 32768}
# With thinking on, Anthropic takes no temperature and top_p only within this range.
THINKING_TOP_P = (0.95, 1.0)
_TOOL_CHOICES: Mapping[int, str] = {
    chat_pb2.TOOL_CHOICE_MODE_NONE: "none",
    chat_pb2.TOOL_CHOICE_MODE_AUTO: "auto",
    chat_pb2.TOOL_CHOICE_MODE_REQUIRED: "any",
}
_JSON_FORMATS = frozenset({chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT, chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA})
# A forced tool call leaves nothing for a response format to shape.
_FORCING_MODES = frozenset({chat_pb2.TOOL_CHOICE_MODE_REQUIRED, chat_pb2.TOOL_CHOICE_MODE_FUNCTION})


def to_request(call: UpstreamCall, *, stream: bool) -> dict[str, Any]:
    """The JSON body of POST /v1/messages for this call."""
    request = call.request
    _refuse_unsupported(request)
    system, messages = to_system_and_messages(request)
    body: dict[str, Any] = {"model": call.upstream_model, "max_tokens": _max_tokens(request), "messages": messages}
    if system:
        body["system"] = system
    tools, tool_choice = _tools(request)
    if tools:
        body["tools"] = tools
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    thinking = _thinking(request, body["max_tokens"], tool_choice)
    if thinking is not None:
        body["thinking"] = thinking
    _add_sampling(body, request, thinking=thinking is not None)
    stop = [s for s in request.stop if s.strip()]  # Anthropic rejects whitespace-only stop sequences
    if stop:
        body["stop_sequences"] = stop
    # Anthropic asks for an opaque id here, never personal data such as an e-mail address.
    if request.user and "@" not in request.user:
        body["metadata"] = {"user_id": request.user}
    if stream:
        body["stream"] = True
    return body


def response_tool_name(request: ChatRequest) -> str | None:
    """The synthetic tool that carries a JSON response format, if this request gets one."""
    if request.response_format.type not in _JSON_FORMATS or request.tool_choice.mode in _FORCING_MODES:
        return None
    taken = {tool.function.name for tool in request.tools}
    name, suffix = RESPONSE_TOOL_NAME, 0
    while name in taken:
        suffix += 1
        name = f"{RESPONSE_TOOL_NAME}_{suffix}"
    return name


def _refuse_unsupported(request: ChatRequest) -> None:
    # Values that ask for nothing (n=1, zero penalties, an empty bias) pass:
    # some frameworks send them on every request.
    asked = (
        ("n", request.HasField("n") and request.n > 1),
        ("logprobs", request.HasField("logprobs") and request.logprobs),
        ("top_logprobs", request.HasField("top_logprobs") and request.top_logprobs > 0),
        ("seed", request.HasField("seed")),
        ("frequency_penalty", request.HasField("frequency_penalty") and request.frequency_penalty != 0),
        ("presence_penalty", request.HasField("presence_penalty") and request.presence_penalty != 0),
        ("logit_bias", bool(_object(request.logit_bias_json, "logit_bias"))),
    )
    for name, is_set in asked:
        if is_set:
            raise unsupported(f"'{name}'", name)


def _max_tokens(request: ChatRequest) -> int:
    if request.HasField("max_completion_tokens"):
        return request.max_completion_tokens
    if request.HasField("max_tokens"):
        return request.max_tokens
    return DEFAULT_MAX_TOKENS


def _add_sampling(body: dict[str, Any], request: ChatRequest, *, thinking: bool) -> None:
    if request.HasField("temperature") and request.temperature > MAX_TEMPERATURE:
        raise invalid_request("'temperature' must be between 0 and 1 for Anthropic models", "temperature")
    if thinking:
        low, high = THINKING_TOP_P
        if request.HasField("top_p") and low <= request.top_p <= high:
            body["top_p"] = request.top_p
        return
    # Sent only when the client set them: newer Claude models reject non-default
    # sampling values. They also reject temperature and top_p together ("cannot
    # both be specified"), and Anthropic's own advice is to alter temperature,
    # not both, so temperature is the one kept.
    if request.HasField("temperature"):
        body["temperature"] = request.temperature
    elif request.HasField("top_p"):
        body["top_p"] = request.top_p


def _tools(request: ChatRequest) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The tools and tool_choice, the response-format tool included."""
    tools = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(request.tools)]
    choice = _tool_choice(request.tool_choice) if request.HasField("tool_choice") else None
    name = response_tool_name(request)
    if name is not None:
        tools.append(_response_tool(request.response_format, name))
        if request.tools and (choice is None or choice["type"] == "auto"):
            # The model may call the client's tools or answer; it must answer through the tool.
            choice = {"type": "any"}
        else:
            choice = {"type": "tool", "name": name}
    if not tools:
        return [], None  # a tool_choice without tools has nothing to choose from
    if request.HasField("parallel_tool_calls") and not request.parallel_tool_calls:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    return tools, choice


def _tool(tool: chat_pb2.Tool, where: str) -> dict[str, Any]:
    if tool.raw_json or tool.type not in ("", "function") or not tool.HasField("function"):
        raise unsupported("tools other than functions", f"{where}.type")
    function = tool.function
    schema = _object(function.parameters_json, f"{where}.function.parameters") or dict(NO_PARAMETERS)
    schema.setdefault("type", "object")  # Anthropic requires an object schema; "{}" means no parameters
    out: dict[str, Any] = {"name": function.name, "input_schema": schema}
    if function.description:
        out["description"] = function.description
    if function.HasField("strict"):
        out["strict"] = function.strict
    return out


def _tool_choice(choice: chat_pb2.ToolChoice) -> dict[str, Any] | None:
    if choice.raw_json:
        raise unsupported("this tool_choice form", "tool_choice")
    if choice.mode == chat_pb2.TOOL_CHOICE_MODE_FUNCTION:
        return {"type": "tool", "name": choice.function_name}
    kind = _TOOL_CHOICES.get(choice.mode)
    return None if kind is None else {"type": kind}


def _response_tool(response_format: chat_pb2.ResponseFormat, name: str) -> dict[str, Any]:
    spec = response_format.json_schema
    schema: dict[str, Any] = dict(PERMISSIVE_OBJECT)
    if response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA and spec.schema_json:
        schema = _object(spec.schema_json, "response_format.json_schema.schema")
        schema.setdefault("type", "object")
    tool: dict[str, Any] = {
        "name": name, "description": spec.description or RESPONSE_TOOL_DESCRIPTION, "input_schema": schema,
    }
    if spec.HasField("strict"):
        tool["strict"] = spec.strict
    return tool


def _thinking(request: ChatRequest, max_tokens: int, tool_choice: dict[str, Any] | None) -> dict[str, Any] | None:
    """Extended thinking for reasoning_effort, when Anthropic can take it on this request."""
    effort = request.reasoning_effort
    if not effort or effort == "none":
        return None
    wanted = THINKING_BUDGETS.get(effort)
    if wanted is None:
        raise invalid_request(f"unknown reasoning_effort {effort[:32]!r}", "reasoning_effort")
    # Anthropic refuses thinking with a forced tool call ("Thinking may not be
    # enabled when tool_choice forces tool use"), and in a tool loop it wants the
    # earlier turn's signed thinking blocks back, which OpenAI clients cannot
    # return. Both are hints about effort: the answer goes on without thinking.
    if (tool_choice is not None and tool_choice["type"] in ("any", "tool")) or _continues_tool_turn(request):
        return None
    budget = max(min(wanted, max_tokens // 2), MIN_THINKING_BUDGET)  # half the limit stays for the answer
    if budget >= max_tokens:
        return None  # the output limit leaves no room for Anthropic's smallest budget
    return {"type": "enabled", "budget_tokens": budget}


def _continues_tool_turn(request: ChatRequest) -> bool:
    """Whether the request answers the last assistant turn's tool calls (no user turn since)."""
    for message in reversed(request.messages):
        if message.role == types_pb2.ROLE_ASSISTANT:
            return bool(message.tool_calls)
        if message.role == types_pb2.ROLE_USER:
            return False
    return False


def _object(text: str, param: str) -> dict[str, Any]:
    """A JSON object given as text ("" is an empty object), numbers kept exact."""
    if not text:
        return {}
    value = loads_exact(text, param)
    if not isinstance(value, dict):
        raise invalid_request("must be a JSON object", param=param)
    return value
