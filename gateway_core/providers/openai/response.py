"""OpenAI chat.completion and chat.completion.chunk JSON -> gateway.v1 messages. Pure.

Unknown enum values (finish_reason, role) are errors, never silent defaults.
Fields the gateway does not model (DeepSeek's reasoning_content, OpenAI's
annotations, ...) travel on in `extra_json`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import UpstreamCall, malformed
from gateway_core.providers.openai.error_map import error_in_body

_FINISH_REASONS: Mapping[str, types_pb2.FinishReason] = {
    "stop": types_pb2.FINISH_REASON_STOP,
    "length": types_pb2.FINISH_REASON_LENGTH,
    "tool_calls": types_pb2.FINISH_REASON_TOOL_CALLS,
    "content_filter": types_pb2.FINISH_REASON_CONTENT_FILTER,
    "function_call": types_pb2.FINISH_REASON_FUNCTION_CALL,
}
_MESSAGE_FIELDS = frozenset({"role", "content", "refusal", "tool_calls"})
_INT64_MAX = 2**63 - 1


def openai_to_finish_reason(value: Any) -> types_pb2.FinishReason:
    """finish_reason string -> enum; null is "not finished", anything unknown is an error."""
    if value is None:
        return types_pb2.FINISH_REASON_UNSPECIFIED
    reason = _FINISH_REASONS.get(value) if isinstance(value, str) else None
    if reason is None:
        raise malformed(f"unknown finish_reason {str(value)[:40]!r}")
    return reason


def openai_to_role(value: Any) -> types_pb2.Role:
    """An assistant message's role string -> enum (only "assistant" is expected)."""
    if value == "assistant":
        return types_pb2.ROLE_ASSISTANT
    raise malformed(f"unexpected role {str(value)[:40]!r}")


def from_response(body: Any, call: UpstreamCall, *, provider: str = "") -> chat_pb2.CreateChatCompletionResponse:
    """A whole chat.completion body -> CreateChatCompletionResponse (usage unset if none reported)."""
    if not isinstance(body, dict):
        raise malformed("response is not a JSON object")
    if body.get("error") and not body.get("choices"):
        raise error_in_body(body["error"])
    choices = body.get("choices")
    if not isinstance(choices, list):
        raise malformed("response has no choices")
    response = chat_pb2.CreateChatCompletionResponse(
        id=_string(body.get("id")), created=_integer(body.get("created", 0)), model=call.client_model,
        system_fingerprint=_string(body.get("system_fingerprint")), service_tier=_string(body.get("service_tier")),
        provider=provider,
    )
    for position, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise malformed("choice is not an object")
        # Fields set one by one: add() with keywords parses them on every call, which costs more.
        index = _integer(choice.get("index", position))
        finish_reason = openai_to_finish_reason(choice.get("finish_reason"))
        logprobs = choice.get("logprobs")
        logprobs_json = "" if logprobs is None else dump(logprobs)
        added = response.choices.add()
        added.index = index
        added.finish_reason = finish_reason
        if logprobs_json:
            added.logprobs_json = logprobs_json
        _fill_message(added.message, choice.get("message"))  # in place: no submessage copy
    usage = body.get("usage")
    if usage is not None:
        _fill_usage(response.usage, usage)  # in place: no Usage built and copied in
    return response


def usage_from(data: Any) -> types_pb2.Usage:
    """OpenAI usage (or DeepSeek's variant with prompt_cache_hit_tokens) -> Usage."""
    usage = types_pb2.Usage()
    _fill_usage(usage, data)
    return usage


def _fill_usage(usage: types_pb2.Usage, data: Any) -> None:
    """Sets usage (a fresh message) from OpenAI's usage object; see usage_from."""
    if not isinstance(data, dict):
        raise malformed("usage is not an object")
    prompt, completion = _count(data.get("prompt_tokens")), _count(data.get("completion_tokens"))
    total = data.get("total_tokens")
    prompt_details = data.get("prompt_tokens_details") or {}
    completion_details = data.get("completion_tokens_details") or {}
    cached = prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else None
    if cached is None:
        cached = data.get("prompt_cache_hit_tokens")
    reasoning = completion_details.get("reasoning_tokens") if isinstance(completion_details, dict) else None
    # Field by field, in the order the constructor took them (the same message either way).
    usage.prompt_tokens = prompt
    usage.completion_tokens = completion
    usage.total_tokens = prompt + completion if total is None else _count(total)
    usage.cached_tokens = _count(cached)
    usage.reasoning_tokens = _count(reasoning)


def _fill_message(message: chat_pb2.Message, data: Any) -> None:
    if not isinstance(data, dict):
        raise malformed("choice has no message")
    message.role = openai_to_role(data.get("role", "assistant"))
    content = data.get("content")
    if isinstance(content, str):
        message.content = content
    elif isinstance(content, list):
        message.parts.extend(_part(p) for p in content)
    elif content is not None:
        raise malformed("message content is neither text nor parts")
    if isinstance(data.get("refusal"), str):
        message.refusal = data["refusal"]
    for call in data.get("tool_calls") or ():
        if not isinstance(call, dict):
            raise malformed("tool call is not an object")
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        message.tool_calls.add(
            id=_string(call.get("id")),
            type=_string(call.get("type")) or "function",
            function=chat_pb2.FunctionCall(
                name=_string(function.get("name")), arguments=_text(function.get("arguments"))
            ),
        )
    message.extra_json = extra_fields(data, _MESSAGE_FIELDS)


def _part(data: Any) -> chat_pb2.ContentPart:
    if isinstance(data, dict) and data.get("type") == "text" and isinstance(data.get("text"), str):
        return chat_pb2.ContentPart(text=data["text"])
    if isinstance(data, dict) and data.get("type") == "refusal" and isinstance(data.get("refusal"), str):
        return chat_pb2.ContentPart(refusal=data["refusal"])
    return chat_pb2.ContentPart(raw_json=dump(data))


@dataclass
class _ToolCalls:
    """Tool-call state of one choice: upstream key -> dense index, and what each call already sent."""

    indexes: dict[Any, int] = field(default_factory=dict)
    last_key: Any = None
    sent_id: set[int] = field(default_factory=set)
    sent_name: set[int] = field(default_factory=set)


class StreamTranslator:
    """Maps OpenAI chat.completion.chunk objects to gateway.v1 chunks.

    feed() is one for one. feed_into() + end_read() translate the chunks of one
    network read and merge consecutive text-only deltas of one choice (same
    index, same head: fingerprint and service tier) into one chunk, their
    content joined once at end_read(): every client concatenates deltas, and a
    chunk less is ~20 us less of the gateway's loop. Only what has arrived
    together is merged; nothing waits for more.

    One per request; not thread-safe. Per-request state: the stream's id and
    created (from its first chunk, so every chunk carries the same), which
    choices have had their role and finish_reason, each choice's tool-call
    indexes (made dense and 0-based, id/type/name sent once: clients
    concatenate repeats), the usage reported but not yet emitted, and the
    text run of the current read not yet handed out (its choice and parts).
    """

    def __init__(self, call: UpstreamCall, *, provider: str = "") -> None:
        self._call = call
        self._provider = provider
        self._id: str | None = None
        self._created = 0
        self._started: set[int] = set()
        self._finished: set[int] = set()
        self._tool_calls: dict[int, _ToolCalls] = {}
        self._usage: types_pb2.Usage | None = None
        self._usage_sent = False
        self._last: dict[str, Any] = {}
        self._head: bytes | None = None  # the encoded id/created/model/provider every chunk repeats
        # The head with the fingerprint and service tier of the last text chunk (as the upstream sent them).
        self._marked_head: bytes | None = None
        self._head_fingerprint: Any = None
        self._head_tier: Any = None
        # The current read's run of text-only deltas (of one choice, under _marked_head), not yet a chunk.
        self._run_parts: list[str] = []
        self._run_index = 0

    @property
    def usage(self) -> types_pb2.Usage | None:
        """The last usage the upstream reported, if any."""
        return self._usage

    @property
    def finished(self) -> bool:
        """Whether the upstream said it was done (every choice finished, or usage sent)."""
        return self._usage is not None or (bool(self._started) and self._started <= self._finished)

    def feed(self, data: Any) -> list[chat_pb2.StreamChatCompletionResponse]:
        """The gateway chunks for one upstream chunk (an in-stream error raises ProviderError)."""
        out: list[chat_pb2.StreamChatCompletionResponse] = []
        self.feed_into(data, out)
        self.end_read(out)
        return out

    def feed_into(self, data: Any, out: list[chat_pb2.StreamChatCompletionResponse]) -> str | None:
        """Translates one upstream chunk of the current read into out; a text-only delta joins the
        read's text run instead (see feed_text) and its content is returned, else None.

        An in-stream error raises ProviderError; the caller still calls end_read(), so that
        the text before the error is not lost to it.
        """
        if type(data) is dict and self._id is not None:
            choices = data.get("choices")
            if type(choices) is list and len(choices) == 1 and not data.get("usage") and not data.get("error"):
                choice = choices[0]
                text = self._text_only(choice)
                if text is not None:  # the bulk of a stream, decided in one pass
                    self.feed_text(data, choice.get("index", 0), text, out)
                    return text
        self.end_read(out)
        out += self._feed_general(data)
        return None

    def feed_text(self, data: dict[str, Any], index: int, text: str,
                  out: list[chat_pb2.StreamChatCompletionResponse]) -> None:
        """Adds a text-only delta to the read's run: data is an upstream chunk feed_into() found to be
        one (of choice index), or one of the same head, with text as its content."""
        self._last = data
        fingerprint, tier = data.get("system_fingerprint"), data.get("service_tier")
        parts = self._run_parts
        if fingerprint != self._head_fingerprint or tier != self._head_tier or self._marked_head is None:
            self.end_read(out)  # the run so far had another head
            base = self._base()  # also sets them, as the general path would
            self._head_fingerprint, self._head_tier = fingerprint, tier
            self._marked_head = base.SerializeToString()
        elif parts and index != self._run_index:
            self.end_read(out)
        self._run_index = index
        parts.append(text)

    def end_read(self, out: list[chat_pb2.StreamChatCompletionResponse]) -> None:
        """Hands out the read's text run, if any, as one chunk: what the general path makes of a text-only
        delta, with the run's content joined once (never grown per event: a read of tiny events stays linear)."""
        parts = self._run_parts
        if not parts:
            return
        assert self._marked_head is not None  # set when the run started
        chunk = chat_pb2.StreamChatCompletionResponse.FromString(self._marked_head)
        added = chunk.choices.add()
        if self._run_index:
            added.index = self._run_index
        added.delta.content = parts[0] if len(parts) == 1 else "".join(parts)
        parts.clear()
        out.append(chunk)

    def _feed_general(self, data: Any) -> list[chat_pb2.StreamChatCompletionResponse]:
        """The chunks for an upstream chunk of any shape (the first, finish, usage, tool calls, ...)."""
        if not isinstance(data, dict):
            raise malformed("stream chunk is not a JSON object")
        if data.get("error"):
            raise error_in_body(data["error"])
        if self._id is None:
            self._id, self._created = _string(data.get("id")), _integer(data.get("created", 0))
        self._last = data
        choices = data.get("choices") or []
        if not isinstance(choices, list):
            raise malformed("stream chunk choices is not a list")
        out = []
        if choices:
            chunk = self._base()
            text = self._text_only(choices[0]) if len(choices) == 1 else None
            if text is not None:  # one choice, a delta of text alone (with usage, say)
                choice = chunk.choices.add()
                index = choices[0].get("index", 0)
                if index:
                    choice.index = index
                choice.delta.content = text
            else:
                for choice in choices:
                    self._fill_choice(chunk.choices.add(), choice)
            out.append(chunk)
        if data.get("usage"):
            self._usage, self._usage_sent = usage_from(data["usage"]), False
            if not choices:
                out.extend(self.finish())
        return out

    def finish(self) -> list[chat_pb2.StreamChatCompletionResponse]:
        """At the end of the stream: the usage chunk, if usage came attached to a choice chunk."""
        if self._usage is None or self._usage_sent:
            return []
        self._usage_sent = True
        chunk = self._base()
        chunk.usage.CopyFrom(self._usage)
        return [chunk]

    # Messages are filled in place and only with non-default values: with upb, a nested
    # constructor copies each submessage and every field set costs, even to its default
    # (which for these fields is the same as unset). A chunk so built is about 4x cheaper.

    def _base(self) -> chat_pb2.StreamChatCompletionResponse:
        head = self._head
        if head is None:  # id, created, model and provider are the stream's: encoded once, parsed per chunk (cheaper)
            head = self._head = chat_pb2.StreamChatCompletionResponse(
                id=self._id or "", created=self._created, model=self._call.client_model, provider=self._provider
            ).SerializeToString()
        chunk = chat_pb2.StreamChatCompletionResponse.FromString(head)
        last = self._last
        fingerprint, tier = last.get("system_fingerprint"), last.get("service_tier")
        if fingerprint and isinstance(fingerprint, str):
            chunk.system_fingerprint = fingerprint
        if tier and isinstance(tier, str):
            chunk.service_tier = tier
        return chunk

    def _text_only(self, choice: Any) -> str | None:
        """The content of a choice that carries nothing else, past its first delta, else None.

        Such a choice fills exactly what _fill_choice would (content, and a
        non-zero index), without the general path's checks: most chunks of a
        stream are these. Anything else (role not yet sent, finish, logprobs,
        tool calls, refusal, extra fields, odd types) takes _fill_choice.
        """
        if type(choice) is not dict:
            return None
        delta = choice.get("delta")
        if type(delta) is not dict or len(delta) != 1:
            return None
        content = delta.get("content")
        if type(content) is not str or choice.get("finish_reason") is not None or choice.get("logprobs") is not None:
            return None
        index = choice.get("index", 0)
        # An index already started was checked then (an int in range); bool is not int here.
        if type(index) is not int or index not in self._started:
            return None
        return content

    def _fill_choice(self, out: chat_pb2.ChoiceDelta, data: Any) -> None:
        if not isinstance(data, dict):
            raise malformed("stream choice is not an object")
        index = _integer(data.get("index", 0))
        delta = data.get("delta") or {}
        if not isinstance(delta, dict):
            raise malformed("stream delta is not an object")
        if index:
            out.index = index
        self._fill_delta(out.delta, index, delta)
        finish_reason = openai_to_finish_reason(data.get("finish_reason"))
        if finish_reason:
            out.finish_reason = finish_reason
            self._finished.add(index)
        logprobs = data.get("logprobs")
        if logprobs is not None:
            out.logprobs_json = dump(logprobs)

    def _fill_delta(self, delta: chat_pb2.Delta, index: int, data: dict[str, Any]) -> None:
        if index not in self._started:
            # The role goes on a choice's first delta only, even when the
            # upstream repeats or omits it.
            self._started.add(index)
            delta.role = openai_to_role(data.get("role", "assistant") or "assistant")
        content = data.get("content")
        if isinstance(content, str):
            delta.content = content  # optional: set even when empty, as the upstream sent it
        refusal = data.get("refusal")
        if isinstance(refusal, str):
            delta.refusal = refusal
        for call in data.get("tool_calls") or ():
            delta.tool_calls.append(self._tool_call(index, call))
        extra = extra_fields(data, _MESSAGE_FIELDS)
        if extra:
            delta.extra_json = extra
        delta.SetInParent()  # present even when empty (a finish chunk's `delta: {}`), as before

    def _tool_call(self, choice: int, data: Any) -> chat_pb2.ToolCallDelta:
        if not isinstance(data, dict):
            raise malformed("tool call delta is not an object")
        state = self._tool_calls.setdefault(choice, _ToolCalls())
        raw_index, call_id = data.get("index"), _string(data.get("id"))
        # Vendors that omit the index are keyed by call id, then by the call before.
        key = raw_index if isinstance(raw_index, int) else (call_id or state.last_key or 0)
        is_new = key not in state.indexes
        dense = state.indexes.setdefault(key, len(state.indexes))
        state.last_key = key
        out = chat_pb2.ToolCallDelta(index=dense)
        if is_new:
            out.type = _string(data.get("type")) or "function"
        if call_id and dense not in state.sent_id:
            state.sent_id.add(dense)
            out.id = call_id
        function = data.get("function")
        if not isinstance(function, dict):
            function = {}
        if isinstance(function.get("name"), str) and dense not in state.sent_name:
            state.sent_name.add(dense)
            out.function.name = function["name"]
        if function.get("arguments") is not None:
            out.function.arguments = _text(function["arguments"])
        return out


def extra_fields(data: Mapping[str, Any], known: frozenset[str]) -> str:
    """The non-null fields of data the gateway does not model, as JSON ("" if none)."""
    if data.keys() <= known:  # the usual case: nothing unknown, no dict to build
        return ""
    extra = {k: v for k, v in data.items() if k not in known and v is not None}
    return dump(extra) if extra else ""


def dump(value: Any) -> str:
    """Compact JSON text."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _json_or_empty(value: Any) -> str:
    return "" if value is None else dump(value)


def _text(value: Any) -> str:
    """A string field, or JSON text for vendors that send arguments as an object."""
    if value is None:
        return ""
    return value if isinstance(value, str) else dump(value)


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _integer(value: Any) -> int:
    if type(value) is int and -_INT64_MAX <= value <= _INT64_MAX:  # the usual case, decided at once
        return value
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value != int(value) or abs(value) > _INT64_MAX:
        raise malformed(f"expected an integer, got {str(value)[:40]!r}")
    return int(value)


def _count(value: Any) -> int:
    """A token count; absent counts are 0. Sign and size are metering's to judge."""
    return 0 if value is None else _integer(value)
