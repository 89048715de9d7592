"""gateway.v1 request -> Gemini generateContent JSON body. Pure: no I/O, no logging.

The body is the same for generateContent and streamGenerateContent (the
endpoint says which). Fields are sent only when the client set them, so
Gemini's defaults stay Gemini's. What Gemini cannot express either goes
(when dropping it cannot change the answer) or is refused with
UNSUPPORTED_PARAMETER (when the client would silently get something else):

    user, metadata          dropped: abuse-monitoring id and OpenAI stored-completion tags
    parallel_tool_calls     dropped: Gemini has no switch; clients get one or more calls either way
    extra_json              dropped: top-level fields only OpenAI-compatible upstreams know
    message name, image detail, tool `strict`, json_schema name/description/strict
                            dropped: no Gemini counterpart, no effect on the answer's shape
    logit_bias              UNSUPPORTED_PARAMETER (a non-empty one would be ignored)
    custom / raw tools, raw tool_choice forms, file ids, raw content parts
                            UNSUPPORTED_PARAMETER

Tool declarations go as `parametersJsonSchema`, not `parameters`: OpenAI
tools carry JSON Schema (additionalProperties, $ref/$defs, anyOf, type
arrays), which `parameters` (an OpenAPI 3.0 subset) rejects with a 400, while
`parametersJsonSchema` takes it as is (python-genai `FunctionDeclaration`).
The same goes for `responseJsonSchema` over `responseSchema`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway_core.errors import GatewayError, Reason, invalid_request
from gateway_core.pb.gateway.v1 import chat_pb2
from gateway_core.providers.base import ChatRequest, UpstreamCall
from gateway_core.providers.gemini.contents import to_contents
from gateway_core.providers.openai.request import loads_exact

_TOOL_MODES: Mapping[int, str] = {
    chat_pb2.TOOL_CHOICE_MODE_NONE: "NONE",
    chat_pb2.TOOL_CHOICE_MODE_AUTO: "AUTO",
    chat_pb2.TOOL_CHOICE_MODE_REQUIRED: "ANY",
}
# Optional scalars copied under Gemini's name when present.
_SCALARS = (
    ("temperature", "temperature"), ("top_p", "topP"), ("n", "candidateCount"),
    ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"),
    ("logprobs", "responseLogprobs"), ("top_logprobs", "logprobs"),
)
# reasoning_effort -> thinkingConfig. Gemini 3 models take a thinkingLevel
# (thinkingBudget is only accepted there for backwards compatibility, "may
# result in suboptimal performance"); Gemini 1.x/2.x only take a thinkingBudget,
# and sending both is a 400. Budgets are the ones Google's own OpenAI
# compatibility layer uses for low/medium/high (1K, 8K, 24K); "none" disables
# thinking where a model allows it (0), and is the lowest level, MINIMAL, on
# Gemini 3, which cannot switch thinking off. Levels a model does not support
# (MEDIUM on some Pro models) come back from Gemini as a 400 naming the level.
_THINKING_LEVELS: Mapping[str, str] = {
    "none": "MINIMAL", "minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH",
}
_THINKING_BUDGETS: Mapping[str, int] = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
_BUDGET_MODELS = re.compile(r"(?:models/)?gemini-[12][.-]")
_INT32 = range(-(2**31), 2**31)


def to_request(call: UpstreamCall) -> dict[str, Any]:
    """The JSON body of POST .../models/{model}:generateContent (or :streamGenerateContent) for this call."""
    request = call.request
    _refuse_unsupported(request)
    system, contents = to_contents(request.messages)
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    if request.tools:
        body["tools"] = [{"functionDeclarations": [_declaration(t, f"tools[{i}]") for i, t in enumerate(request.tools)]}]
    if request.HasField("tool_choice"):
        tool_config = _tool_config(request.tool_choice)
        if tool_config is not None:
            body["toolConfig"] = tool_config
    generation = _generation_config(request, call.upstream_model)
    if generation:
        body["generationConfig"] = generation
    return body


def unsupported(param: str, what: str) -> GatewayError:
    """The error for a parameter Gemini cannot honour."""
    return GatewayError(Reason.UNSUPPORTED_PARAMETER, f"{what} is not supported by Gemini models", param=param)


def _refuse_unsupported(request: ChatRequest) -> None:
    if request.logit_bias_json and loads_exact(request.logit_bias_json, "logit_bias"):
        raise unsupported("logit_bias", "logit_bias")


def _declaration(tool: chat_pb2.Tool, where: str) -> dict[str, Any]:
    if tool.raw_json or tool.type not in ("", "function") or not tool.HasField("function"):
        raise unsupported(where, "a tool that is not a function")
    declaration: dict[str, Any] = {"name": tool.function.name}
    if tool.function.description:
        declaration["description"] = tool.function.description
    parameters = json_object(tool.function.parameters_json, f"{where}.function.parameters")
    if parameters:  # "no parameters" is an absent schema: an empty one is not an object schema
        declaration["parametersJsonSchema"] = parameters
    return declaration


def _tool_config(choice: chat_pb2.ToolChoice) -> dict[str, Any] | None:
    if choice.raw_json:
        raise unsupported("tool_choice", "this tool_choice form")
    if choice.mode == chat_pb2.TOOL_CHOICE_MODE_FUNCTION:
        config: dict[str, Any] = {"mode": "ANY", "allowedFunctionNames": [choice.function_name]}
    elif choice.mode in _TOOL_MODES:
        config = {"mode": _TOOL_MODES[choice.mode]}
    else:
        return None
    return {"functionCallingConfig": config}


def _generation_config(request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name, gemini_name in _SCALARS:
        if request.HasField(name):
            config[gemini_name] = getattr(request, name)
    limit = _output_limit(request)
    if limit is not None:
        config["maxOutputTokens"] = limit
    if request.stop:
        config["stopSequences"] = list(request.stop)
    if request.HasField("seed"):
        if request.seed not in _INT32:
            raise invalid_request("'seed' must fit in 32 bits for Gemini models", "seed")
        config["seed"] = request.seed
    if request.HasField("response_format"):
        config.update(_response_format(request.response_format))
    if request.reasoning_effort:
        config["thinkingConfig"] = _thinking(request.reasoning_effort, upstream_model)
    return config


def _output_limit(request: ChatRequest) -> int | None:
    if request.HasField("max_completion_tokens"):
        limit = request.max_completion_tokens
    elif request.HasField("max_tokens"):
        limit = request.max_tokens
    else:
        return None
    # maxOutputTokens is an int32; no model writes 2**31 tokens, so capping changes nothing.
    return min(limit, _INT32.stop - 1)


def _response_format(response_format: chat_pb2.ResponseFormat) -> dict[str, Any]:
    if response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        return {"responseMimeType": "application/json"}
    if response_format.type != chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        return {}
    out: dict[str, Any] = {"responseMimeType": "application/json"}
    schema = json_object(response_format.json_schema.schema_json, "response_format.json_schema.schema")
    if schema:
        out["responseJsonSchema"] = schema
    return out


def _thinking(effort: str, upstream_model: str) -> dict[str, Any]:
    if effort not in _THINKING_LEVELS:
        raise invalid_request(f"'reasoning_effort' must be one of {', '.join(_THINKING_LEVELS)}", "reasoning_effort")
    if _BUDGET_MODELS.match(upstream_model):
        config: dict[str, Any] = {"thinkingBudget": _THINKING_BUDGETS[effort]}
    else:
        config = {"thinkingLevel": _THINKING_LEVELS[effort]}
    # A client that asks for reasoning gets its summary as reasoning_content.
    if effort != "none":
        config["includeThoughts"] = True
    return config


def json_object(text: str, param: str) -> dict[str, Any]:
    """A JSON object given as text ("" is an empty object), numbers kept exact."""
    if not text:
        return {}
    value = loads_exact(text, param)
    if not isinstance(value, dict):
        raise invalid_request("must be a JSON object", param=param)
    return value
