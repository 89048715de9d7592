"""The built-in offline provider: deterministic replies, real-looking usage, no network.

The route's upstream model id picks the behaviour: "echo" repeats the last user
message; any other id ("chat") answers with a few pleasant sentences chosen by
a hash of the conversation, so the same request always gets the same reply.
With function tools offered (and tool_choice not "none") it calls one, with
arguments built from the tool's JSON schema; after a tool result it answers
with text that mentions the result. max_tokens, stop and n behave as upstream.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from gateway_core.errors import invalid_request
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers import mock_text
from gateway_core.providers.base import ChatRequest, UpstreamCall
from gateway_core.tokens import estimate_prompt_tokens, estimate_text_tokens

MAX_CHOICES = 128  # OpenAI's own limit on n
_WORDS = re.compile(r"\s*\S+")
_FRAGMENTS = re.compile(r"[^:,]*[:,]?")


@dataclass(frozen=True)
class _Choice:
    """What one choice generated."""

    content: str | None
    tool_calls: tuple[chat_pb2.ToolCall, ...]
    finish_reason: types_pb2.FinishReason

    def completion_tokens(self) -> int:
        text = (self.content or "") + "".join(c.function.name + c.function.arguments for c in self.tool_calls)
        return estimate_text_tokens(text)


class MockProvider:
    """A deterministic, offline Provider. Safe to share; holds nothing."""

    def __init__(self, name: str = "mock") -> None:
        self.name = name

    async def complete(self, call: UpstreamCall) -> chat_pb2.CreateChatCompletionResponse:
        """The whole reply, with usage from the token estimator."""
        choices = _generate(call)
        response = chat_pb2.CreateChatCompletionResponse(
            id=_completion_id(call), created=int(time.time()), model=call.client_model,
            usage=_usage(call.request, choices), provider=self.name,
        )
        for index, choice in enumerate(choices):
            message = chat_pb2.Message(role=types_pb2.ROLE_ASSISTANT, tool_calls=choice.tool_calls)
            if choice.content is not None:
                message.content = choice.content
            response.choices.add(index=index, message=message, finish_reason=choice.finish_reason)
        return response

    async def stream(self, call: UpstreamCall) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        """The same reply as complete(), as OpenAI would stream it, then a usage chunk."""
        choices = _generate(call)
        base = chat_pb2.StreamChatCompletionResponse(
            id=_completion_id(call), created=int(time.time()), model=call.client_model, provider=self.name
        )
        for index, choice in enumerate(choices):
            for delta in _deltas(choice):
                yield _chunk(base, index, delta)
            yield _chunk(base, index, chat_pb2.Delta(), choice.finish_reason)
        final = chat_pb2.StreamChatCompletionResponse()
        final.CopyFrom(base)
        final.usage.CopyFrom(_usage(call.request, choices))
        yield final

    async def aclose(self) -> None:
        """Nothing to release."""


def _generate(call: UpstreamCall) -> list[_Choice]:
    request = call.request
    seed = _seed(request)
    count = request.n if request.HasField("n") and request.n > 0 else 1
    if count > MAX_CHOICES:
        raise invalid_request(f"n must be at most {MAX_CHOICES}", param="n")
    tool = _tool_to_call(request)
    if tool is not None:
        return [_tool_choice(tool, seed, index) for index in range(count)]
    return [_text_choice(call, seed, index) for index in range(count)]


def _seed(request: ChatRequest) -> bytes:
    digest = hashlib.sha256()
    for message in request.messages:
        encoded = message.SerializeToString(deterministic=True)
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
    return digest.digest()


def _completion_id(call: UpstreamCall) -> str:
    source = call.request_id.encode() if call.request_id else _seed(call.request)
    return "chatcmpl-mock-" + hashlib.sha256(source).hexdigest()[:24]


def _text_choice(call: UpstreamCall, seed: bytes, index: int) -> _Choice:
    request = call.request
    if call.upstream_model == "echo":
        text = mock_text.last_user_text(request)
    elif request.messages and request.messages[-1].role == types_pb2.ROLE_TOOL:
        text = mock_text.tool_result_reply(request)
    else:
        text = mock_text.chat_reply(request, hashlib.sha256(seed + index.to_bytes(4, "big")).digest())
    finish = types_pb2.FINISH_REASON_STOP
    text = _cut_at_stop(text, request.stop)
    limit = _token_limit(request)
    if limit is not None and estimate_text_tokens(text) > limit:
        text, finish = _truncate(text, limit), types_pb2.FINISH_REASON_LENGTH
    return _Choice(content=text, tool_calls=(), finish_reason=finish)


def _tool_to_call(request: ChatRequest) -> chat_pb2.FunctionDefinition | None:
    functions = [t.function for t in request.tools if t.type in ("", "function") and t.function.name]
    choice = request.tool_choice
    if not functions or choice.mode == chat_pb2.TOOL_CHOICE_MODE_NONE:
        return None
    if request.messages and request.messages[-1].role == types_pb2.ROLE_TOOL:
        return None
    if choice.mode == chat_pb2.TOOL_CHOICE_MODE_FUNCTION:
        for function in functions:
            if function.name == choice.function_name:
                return function
        raise invalid_request("tool_choice names a function that is not in tools", param="tool_choice")
    return functions[0]


def _tool_choice(function: chat_pb2.FunctionDefinition, seed: bytes, index: int) -> _Choice:
    call_id = "call_" + hashlib.sha256(seed + b"tool" + index.to_bytes(4, "big")).hexdigest()[:24]
    call = chat_pb2.ToolCall(
        id=call_id, type="function",
        function=chat_pb2.FunctionCall(name=function.name, arguments=mock_text.arguments_for(function.parameters_json)),
    )
    return _Choice(content=None, tool_calls=(call,), finish_reason=types_pb2.FINISH_REASON_TOOL_CALLS)


def _token_limit(request: ChatRequest) -> int | None:
    if request.HasField("max_completion_tokens"):
        return max(request.max_completion_tokens, 0)
    if request.HasField("max_tokens"):
        return max(request.max_tokens, 0)
    return None


def _cut_at_stop(text: str, stops: Iterable[str]) -> str:
    found = [p for p in (text.find(stop) for stop in stops if stop) if p >= 0]
    return text[: min(found)] if found else text


def _truncate(text: str, limit: int) -> str:
    """The longest prefix, at a word boundary if any fits, within `limit` estimated tokens."""
    ends = [m.end() for m in _WORDS.finditer(text)]
    words = _largest(len(ends), lambda k: estimate_text_tokens(text[: ends[k - 1]]) <= limit)
    if words:
        return text[: ends[words - 1]]
    chars = _largest(len(text), lambda k: estimate_text_tokens(text[:k]) <= limit)
    return text[:chars]


def _largest(upper: int, fits: Callable[[int], bool]) -> int:
    """The largest k in 0..upper with fits(k), for a monotone fits (fits(0) holds)."""
    low, high = 0, upper
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _usage(request: ChatRequest, choices: list[_Choice]) -> types_pb2.Usage:
    prompt = estimate_prompt_tokens(request)
    completion = sum(choice.completion_tokens() for choice in choices)
    return types_pb2.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _deltas(choice: _Choice) -> list[chat_pb2.Delta]:
    """A choice's deltas before its finish chunk: role first, then words or tool-call pieces."""
    if choice.content is not None:
        deltas = [chat_pb2.Delta(role=types_pb2.ROLE_ASSISTANT, content="")]
        deltas += [chat_pb2.Delta(content=word) for word in _pieces(_WORDS, choice.content)]
        return deltas
    # As OpenAI does for tool calls: content stays null.
    deltas = [chat_pb2.Delta(role=types_pb2.ROLE_ASSISTANT)]
    for index, call in enumerate(choice.tool_calls):
        first = chat_pb2.ToolCallDelta(
            index=index, id=call.id, type=call.type,
            function=chat_pb2.FunctionCallDelta(name=call.function.name, arguments=""),
        )
        deltas.append(chat_pb2.Delta(tool_calls=[first]))
        for fragment in _pieces(_FRAGMENTS, call.function.arguments):
            piece = chat_pb2.ToolCallDelta(index=index, function=chat_pb2.FunctionCallDelta(arguments=fragment))
            deltas.append(chat_pb2.Delta(tool_calls=[piece]))
    return deltas


def _pieces(pattern: re.Pattern[str], text: str) -> list[str]:
    """Non-empty pieces of text that join back to exactly text."""
    pieces = [m.group() for m in pattern.finditer(text) if m.group()]
    rest = text[sum(map(len, pieces)) :]
    return [*pieces, rest] if rest else pieces


def _chunk(
    base: chat_pb2.StreamChatCompletionResponse,
    index: int,
    delta: chat_pb2.Delta,
    finish: types_pb2.FinishReason = types_pb2.FINISH_REASON_UNSPECIFIED,
) -> chat_pb2.StreamChatCompletionResponse:
    chunk = chat_pb2.StreamChatCompletionResponse()
    chunk.CopyFrom(base)
    chunk.choices.add(index=index, delta=delta, finish_reason=finish)
    return chunk
