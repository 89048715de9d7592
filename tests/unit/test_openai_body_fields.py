"""The OpenAI upstream body, built from the fields the request has (ListFields), is the body the
per-field presence tests built: the same keys with the same values in the same order."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from gateway_core.pb.gateway.v1 import chat_pb2
from gateway_core.providers.base import UpstreamCall
from gateway_core.providers.openai import request as openai_request

Request = chat_pb2.CreateChatCompletionRequest | chat_pb2.StreamChatCompletionRequest
# Each scalar at its zero (present all the same: proto3 optional) and at another value.
SCALAR_VALUES: dict[str, tuple[Any, Any]] = {
    "temperature": (0.0, 0.7), "top_p": (0.0, 0.9), "max_tokens": (0, 64), "max_completion_tokens": (0, 32),
    "n": (0, 2), "seed": (0, -5), "parallel_tool_calls": (False, True), "frequency_penalty": (0.0, -1.5),
    "presence_penalty": (0.0, 1.0), "logprobs": (False, True), "top_logprobs": (0, 3),
}


def _set_options(request: Request, which: str) -> None:
    if which == "stop":
        request.stop.extend(["a", "b"])
    elif which == "user":
        request.user = "u-1"
    elif which == "tools":
        request.tools.add(type="function", function={"name": "f", "parameters_json": '{"type":"object"}'})
    elif which == "tool_choice":
        request.tool_choice.mode = chat_pb2.TOOL_CHOICE_MODE_REQUIRED
    elif which == "response_format":
        request.response_format.type = chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT
    elif which == "logit_bias_json":
        request.logit_bias_json = '{"50256": -100}'
    elif which == "reasoning_effort":
        request.reasoning_effort = "low"
    elif which == "metadata":
        request.metadata["b"] = "2"
        request.metadata["a"] = "1"
    elif which == "extra_json":
        request.extra_json = '{"top_k": 5, "model": "not-this"}'


def _the_long_way(call: UpstreamCall, *, stream: bool) -> dict[str, Any]:
    """_openai_body as it was: a HasField per scalar, every option tested."""
    request = call.request
    body: dict[str, Any] = {
        "model": call.upstream_model,
        "messages": [openai_request._message(m, f"messages[{i}]") for i, m in enumerate(request.messages)],
    }
    for name in openai_request._SCALARS:
        if request.HasField(name):
            body[name] = getattr(request, name)
    openai_request._add_options(body, request)
    if stream:
        options: dict[str, Any] = {"include_usage": True}
        if request.stream_options.HasField("include_obfuscation"):
            options["include_obfuscation"] = request.stream_options.include_obfuscation
        body["stream"] = True
        body["stream_options"] = options
    for key, value in openai_request._object(request.extra_json, "extra_json").items():
        if key not in openai_request._PROTECTED and key not in body and not openai_request._smuggled(key):
            body[key] = value
    return body


OPTIONS = ["stop", "user", "tools", "tool_choice", "response_format", "logit_bias_json", "reasoning_effort",
           "metadata", "extra_json"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("at_zero", [True, False])
@pytest.mark.parametrize("options", [(), *((o,) for o in OPTIONS), tuple(OPTIONS)])
def test_the_body_from_present_fields_equals_the_long_way(stream: bool, at_zero: bool,
                                                          options: tuple[str, ...]) -> None:
    scalar_sets = [(), tuple(SCALAR_VALUES), *itertools.combinations(SCALAR_VALUES, 2)]
    for scalars in scalar_sets:
        request: Request = chat_pb2.StreamChatCompletionRequest() if stream else chat_pb2.CreateChatCompletionRequest()
        request.model = "m"
        request.messages.add(role=1, content="hi")
        for name in scalars:
            setattr(request, name, SCALAR_VALUES[name][0 if at_zero else 1])
        for option in options:
            _set_options(request, option)
        call = UpstreamCall(request, "up-model", "m", "req_1")
        built = openai_request._openai_body(call, stream=stream)
        expected = _the_long_way(call, stream=stream)
        assert list(built.items()) == list(expected.items()), (scalars, options)
        assert orjson.dumps(built) == orjson.dumps(expected)
        assert set(scalars) <= set(built)  # a scalar set to its zero is still sent
