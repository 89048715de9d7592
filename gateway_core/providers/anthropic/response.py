"""Anthropic Message JSON -> gateway.v1 CreateChatCompletionResponse. Pure.

Also the pieces the stream translator shares: the stop_reason table, usage
counting and the malformed-answer error. An unknown stop_reason is an error,
never a silent default. Anthropic has no creation time, so `created` is now.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.anthropic.error_map import error_in_event
from gateway_core.providers.anthropic.request import response_tool_name
from gateway_core.providers.base import UpstreamCall, malformed

# [anthropic-sdk-python types/stop_reason.py]; pause_turn (a server tool paused a long
# turn) has no OpenAI counterpart and ends the turn as far as the client can tell.
_STOP_REASONS: Mapping[str, types_pb2.FinishReason] = {
    "end_turn": types_pb2.FINISH_REASON_STOP,
    "stop_sequence": types_pb2.FINISH_REASON_STOP,
    "pause_turn": types_pb2.FINISH_REASON_STOP,
    "max_tokens": types_pb2.FINISH_REASON_LENGTH,
    "model_context_window_exceeded": types_pb2.FINISH_REASON_LENGTH,
    "tool_use": types_pb2.FINISH_REASON_TOOL_CALLS,
    "refusal": types_pb2.FINISH_REASON_CONTENT_FILTER,
}
_INT64_MAX = 2**63 - 1


def anthropic_to_finish_reason(value: Any, *, called_tools: bool = True) -> types_pb2.FinishReason:
    """stop_reason -> finish_reason. Null is a natural stop; anything unknown is an error.

    called_tools=False turns tool_use into stop: only the response-format tool
    was used, and its JSON is the answer.
    """
    if value is None:
        return types_pb2.FINISH_REASON_STOP
    reason = _STOP_REASONS.get(value) if isinstance(value, str) else None
    if reason is None:
        raise malformed(f"unknown stop_reason {str(value)[:40]!r}")
    if reason == types_pb2.FINISH_REASON_TOOL_CALLS and not called_tools:
        return types_pb2.FINISH_REASON_STOP
    return reason


def from_response(
    body: Any, call: UpstreamCall, *, provider: str = "", created: int | None = None
) -> chat_pb2.CreateChatCompletionResponse:
    """A whole Message body -> CreateChatCompletionResponse with one choice (usage unset if none)."""
    if not isinstance(body, dict):
        raise malformed("response is not a JSON object")
    if body.get("type") == "error":
        raise error_in_event(body.get("error"))
    content = body.get("content")
    if not isinstance(content, list):
        raise malformed("response has no content list")
    message = _message(content, response_tool_name(call.request))
    response = chat_pb2.CreateChatCompletionResponse(
        id=_string(body.get("id")), created=int(time.time()) if created is None else created,
        model=call.client_model, provider=provider,
    )
    finish = anthropic_to_finish_reason(body.get("stop_reason"), called_tools=bool(message.tool_calls))
    response.choices.add(index=0, message=message, finish_reason=finish)
    if body.get("usage") is not None:
        response.usage.CopyFrom(usage_from(body["usage"]))
    return response


def _message(content: list[Any], response_tool: str | None) -> chat_pb2.Message:
    message = chat_pb2.Message(role=types_pb2.ROLE_ASSISTANT)
    texts: list[str] = []
    reasoning: list[str] = []
    answer: str | None = None
    for block in content:
        if not isinstance(block, dict):
            raise malformed("content block is not an object")
        kind = block.get("type")
        if kind == "text":
            texts.append(_string(block.get("text")))
        elif kind == "thinking":
            reasoning.append(_string(block.get("thinking")))
        elif kind == "tool_use" and response_tool is not None and block.get("name") == response_tool:
            answer = dump(tool_input(block))
        elif kind == "tool_use":
            message.tool_calls.add(
                id=_string(block.get("id")), type="function",
                function=chat_pb2.FunctionCall(name=_string(block.get("name")), arguments=dump(tool_input(block))),
            )
        # redacted_thinking and server-tool blocks hold nothing an OpenAI client can use.
    if answer is not None:
        message.content = answer  # the client asked for a JSON document; a text preamble is not part of it
    elif texts:
        message.content = "".join(texts)
    if reasoning:
        message.extra_json = dump({"reasoning_content": "".join(reasoning)})
    return message


def tool_input(block: Mapping[str, Any]) -> Any:
    """A tool_use block's input object ({} when absent)."""
    value = block.get("input")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise malformed("tool_use input is not an object")
    return value


@dataclass
class UsageCounts:
    """Anthropic's token counters as last reported.

    Reports are cumulative (message_start, then each message_delta): a field
    present in a report replaces the earlier value, never adds to it.
    """

    input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    reported: bool = False

    def update(self, data: Any) -> None:
        """Takes in one usage object."""
        if not isinstance(data, dict):
            raise malformed("usage is not an object")
        for name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens"):
            if data.get(name) is not None:
                setattr(self, name, _count(data[name]))
        details = data.get("output_tokens_details")
        if isinstance(details, dict) and details.get("thinking_tokens") is not None:
            self.thinking_tokens = _count(details["thinking_tokens"])
        self.reported = True

    def usage(self) -> types_pb2.Usage:
        """In OpenAI's terms: cache reads and writes are prompt tokens too (Anthropic's
        input_tokens leaves them out); thinking is part of the output."""
        prompt = self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens
        return types_pb2.Usage(
            prompt_tokens=prompt, completion_tokens=self.output_tokens, total_tokens=prompt + self.output_tokens,
            cached_tokens=self.cache_read_input_tokens, reasoning_tokens=self.thinking_tokens,
        )


def usage_from(data: Any) -> types_pb2.Usage:
    """One Anthropic usage object -> Usage."""
    counts = UsageCounts()
    counts.update(data)
    return counts.usage()


def dump(value: Any) -> str:
    """Compact JSON text."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _count(value: Any) -> int:
    """A token count. Sign and size are metering's to judge; non-integers are malformed."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value != int(value) or abs(value) > _INT64_MAX:
        raise malformed(f"expected a token count, got {str(value)[:40]!r}")
    return int(value)
