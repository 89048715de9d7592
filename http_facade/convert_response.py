"""gateway.v1 responses in, OpenAI `chat.completion` / `chat.completion.chunk` JSON out.

Pure and on the hot path: dicts built by hand, serialized once with orjson.
Key presence follows OpenAI exactly, because the SDK's stream accumulator
concatenates every string it sees: a tool call's id, type and name appear only
on the delta that carries them, and a delta's role only on the first chunk.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway_core.pb.gateway.v1 import chat_pb2 as pb
from gateway_core.pb.gateway.v1 import types_pb2

FINISH_REASONS: dict[int, str] = {
    types_pb2.FINISH_REASON_STOP: "stop",
    types_pb2.FINISH_REASON_LENGTH: "length",
    types_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
    types_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter",
    types_pb2.FINISH_REASON_FUNCTION_CALL: "function_call",
}
ROLE_NAMES: dict[int, str] = {
    types_pb2.ROLE_SYSTEM: "system",
    types_pb2.ROLE_USER: "user",
    types_pb2.ROLE_ASSISTANT: "assistant",
    types_pb2.ROLE_TOOL: "tool",
    types_pb2.ROLE_DEVELOPER: "developer",
}


def completion_json(response: pb.CreateChatCompletionResponse) -> bytes:
    """A whole completion as OpenAI's `chat.completion` JSON."""
    body: dict[str, Any] = {
        "id": response.id,
        "object": "chat.completion",
        "created": response.created,
        "model": response.model,
        "choices": [
            {
                "index": choice.index,
                "message": _message(choice.message),
                "logprobs": _logprobs(choice.logprobs_json) if choice.logprobs_json else None,
                # An unknown enum value maps to null: never invent a finish reason.
                "finish_reason": FINISH_REASONS.get(choice.finish_reason),
            }
            for choice in response.choices
        ],
        "usage": usage_json(response.usage) if response.HasField("usage") else None,
    }
    if response.service_tier:
        body["service_tier"] = response.service_tier
    if response.system_fingerprint:
        body["system_fingerprint"] = response.system_fingerprint
    return orjson.dumps(body)


def usage_json(usage: types_pb2.Usage) -> dict[str, Any]:
    """OpenAI's usage object; the gateway's cost fields are not part of it."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


class ChunkEncoder:
    """Turns one stream's gRPC messages into SSE `data:` events.

    One per streamed request; not thread-safe. It pins the id, created and model
    of the first message so every chunk of the stream repeats them exactly, and
    remembers whether the client asked for the final usage chunk.
    """

    def __init__(self, first: pb.StreamChatCompletionResponse, *, include_usage: bool) -> None:
        self._head: dict[str, Any] = {
            "id": first.id,
            "object": "chat.completion.chunk",
            "created": first.created,
            "model": first.model,
        }
        if first.service_tier:
            self._head["service_tier"] = first.service_tier
        if first.system_fingerprint:
            self._head["system_fingerprint"] = first.system_fingerprint
        self._include_usage = include_usage
        # The head's bytes are the same in every chunk: serialized once, and each chunk
        # only serializes its choices. Same bytes as orjson.dumps of the whole dict.
        self._prefix = b"data: " + orjson.dumps(self._head)[:-1] + b',"choices":'
        self._choices_end = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        # Most of a stream is chunks of choice 0 carrying only text: all their bytes but the text's.
        self._text_head = self._prefix + b'[{"index":0,"delta":{"content":'
        self._text_tail = b'},"logprobs":null,"finish_reason":null}]' + self._choices_end

    def encode(self, message: pb.StreamChatCompletionResponse) -> bytes:
        """The SSE events for one gRPC message as one byte string (b"" for none); see events()."""
        data = b""
        choices = message.choices
        count = len(choices)
        if count:
            data = (self._one_choice(choices[0]) if count == 1 else None) or (
                self._prefix + orjson.dumps([_choice_delta(c) for c in choices]) + self._choices_end)
        if self._include_usage and message.HasField("usage"):
            data += self._prefix + b'[],"usage":' + _usage_bytes(message.usage) + b"}\n\n"
        return data

    def _one_choice(self, choice: pb.ChoiceDelta) -> bytes | None:
        """The event of a message with one choice whose delta carries at most a role and text (a stream's
        first chunk, its text chunks, its finish chunk), or None for any other shape (the general path).

        The same bytes as orjson.dumps of _choice_delta(choice) in the chunk, without building the dicts.
        """
        if choice.logprobs_json:
            return None
        # The delta's set fields in one call, in field-number order (role, content): _delta's key order.
        fields = choice.delta.ListFields()
        index, finish = choice.index, choice.finish_reason
        if not index and not finish and len(fields) == 1 and fields[0][0] is _CONTENT_FIELD:
            return self._text_head + orjson.dumps(fields[0][1]) + self._text_tail  # most of a stream
        delta = b""
        for field, value in fields:
            if field is _ROLE_FIELD:
                delta = b'"role":' + _ROLE_JSON.get(value, _ASSISTANT_JSON)
            elif field is _CONTENT_FIELD:
                delta += (b',"content":' if delta else b'"content":') + orjson.dumps(value)
            else:
                return None
        return self._prefix + b'[{"index":%d,"delta":{%b},"logprobs":null,"finish_reason":%b}]%b' % (
            index, delta, _FINISH_JSON.get(finish, b"null"), self._choices_end)

    def events(self, message: pb.StreamChatCompletionResponse) -> list[bytes]:
        """The SSE events for one gRPC message: zero, one or two."""
        events: list[bytes] = []
        if message.choices:
            chunk = {**self._head, "choices": [_choice_delta(c) for c in message.choices]}
            if self._include_usage:
                chunk["usage"] = None  # OpenAI's shape when usage is coming at the end
            events.append(_event(chunk))
        # The core always meters, so it always sends usage; it reaches the
        # client only if asked, since many clients index choices[0] blindly.
        if message.HasField("usage") and self._include_usage:
            events.append(_event({**self._head, "choices": [], "usage": usage_json(message.usage)}))
        return events


def _event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _message(message: pb.Message) -> dict[str, Any]:
    out: dict[str, Any] = {
        "role": "assistant",
        # _content's first answer inline: most answers are text.
        "content": message.content if message.HasField("content") else _content(message),
        "refusal": message.refusal if message.HasField("refusal") else None,
    }
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": call.type or "function",
                "function": {"name": call.function.name, "arguments": call.function.arguments},
            }
            for call in message.tool_calls
        ]
    if message.extra_json:
        _merge_extra(out, message.extra_json)
    return out


def _content(message: pb.Message) -> str | None:
    if message.HasField("content"):
        return message.content
    texts = [part.text for part in message.parts if part.WhichOneof("part") == "text"]
    return "".join(texts) if texts else None


_CONTENT_FIELD = pb.Delta.DESCRIPTOR.fields_by_name["content"]
_ROLE_FIELD = pb.Delta.DESCRIPTOR.fields_by_name["role"]
# ChunkEncoder._one_choice's pieces: the JSON of each role and finish reason, as orjson writes them.
_ROLE_JSON: dict[int, bytes] = {role: orjson.dumps(name) for role, name in ROLE_NAMES.items()}
_ASSISTANT_JSON = orjson.dumps("assistant")  # _delta's name for a role it does not know
_FINISH_JSON: dict[int, bytes] = {reason: orjson.dumps(name) for reason, name in FINISH_REASONS.items()}
_USAGE_JSON = (b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,'
               b'"prompt_tokens_details":{"cached_tokens":%d},"completion_tokens_details":{"reasoning_tokens":%d}}')


def _usage_bytes(usage: types_pb2.Usage) -> bytes:
    """orjson.dumps(usage_json(usage)), without the dicts (the counts are integers)."""
    return _USAGE_JSON % (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_tokens,
                          usage.reasoning_tokens)


def _choice_delta(choice: pb.ChoiceDelta) -> dict[str, Any]:
    return {
        "index": choice.index,
        "delta": _delta(choice.delta),
        "logprobs": _logprobs(choice.logprobs_json),
        "finish_reason": FINISH_REASONS.get(choice.finish_reason),
    }


def _delta(delta: pb.Delta) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if delta.role:
        out["role"] = ROLE_NAMES.get(delta.role, "assistant")
    if delta.HasField("content"):
        out["content"] = delta.content
    if delta.HasField("refusal"):
        out["refusal"] = delta.refusal
    if delta.tool_calls:
        out["tool_calls"] = [_tool_call_delta(call) for call in delta.tool_calls]
    if delta.extra_json:
        _merge_extra(out, delta.extra_json)
    return out


def _tool_call_delta(call: pb.ToolCallDelta) -> dict[str, Any]:
    out: dict[str, Any] = {"index": call.index}
    if call.id:
        out["id"] = call.id
    if call.type:
        out["type"] = call.type
    if call.HasField("function"):
        function: dict[str, str] = {}
        if call.function.HasField("name"):
            function["name"] = call.function.name
        if call.function.HasField("arguments"):
            function["arguments"] = call.function.arguments
        out["function"] = function
    return out


def _logprobs(logprobs_json: str) -> Any:
    return orjson.loads(logprobs_json) if logprobs_json else None


def _merge_extra(out: dict[str, Any], extra_json: str) -> None:
    """Adds fields the gateway does not model (reasoning_content, ...) without overriding ours."""
    extra = orjson.loads(extra_json)
    if isinstance(extra, dict):
        for key, value in extra.items():
            out.setdefault(key, value)
