"""Gemini GenerateContentResponse JSON -> gateway.v1 completion. Pure.

Also the pieces the stream translator shares: a candidate's parts, finish
reasons, usage and logprobs. Unknown finish reasons are errors, never silent
defaults. Thought parts (`thought: true`, summaries returned when
includeThoughts is on) become `reasoning_content`, as DeepSeek-style clients
expect; function calls get gateway-made ids that carry their thought
signature (call_ids). Signatures on text parts are not carried: Gemini 3
requires only those of function calls back, and an OpenAI client has nowhere
to keep them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import UpstreamCall, malformed
from gateway_core.providers.gemini.call_ids import new_call_id
from gateway_core.providers.gemini.error_map import error_in_body
from gateway_core.providers.openai.response import dump

_STOP = types_pb2.FINISH_REASON_STOP
_FILTERED = types_pb2.FINISH_REASON_CONTENT_FILTER
# Every FinishReason of python-genai `types.FinishReason` (which mirrors the API's enum).
_FINISH_REASONS: Mapping[str, types_pb2.FinishReason] = {
    "STOP": _STOP,
    "MAX_TOKENS": types_pb2.FINISH_REASON_LENGTH,
    **dict.fromkeys(
        ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
         "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"),
        _FILTERED,
    ),
    # OpenAI has no word for these; "stop" is the least wrong, and inventing
    # values would break typed clients.
    **dict.fromkeys(
        ("MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS", "OTHER", "LANGUAGE",
         "FINISH_REASON_UNSPECIFIED", "NO_IMAGE", "IMAGE_OTHER"),
        _STOP,
    ),
}
_INT64_MAX = 2**63 - 1


def gemini_to_finish_reason(value: Any, *, called_tools: bool) -> types_pb2.FinishReason:
    """finishReason -> enum. Absent is "not finished"; STOP after a function call is
    tool_calls (Gemini says STOP for those); anything unknown is an error."""
    if value is None:
        return types_pb2.FINISH_REASON_UNSPECIFIED
    reason = _FINISH_REASONS.get(value) if isinstance(value, str) else None
    if reason is None:
        raise malformed(f"unknown finishReason {str(value)[:40]!r}")
    if value == "STOP" and called_tools:
        return types_pb2.FINISH_REASON_TOOL_CALLS
    return reason


@dataclass
class CandidateParts:
    """What one candidate (or one streamed increment of it) says, sorted by kind."""

    text: str = ""
    thoughts: str = ""
    # (id carrying the thought signature, name, arguments as compact JSON)
    calls: list[tuple[str, str, str]] = field(default_factory=list)


def read_parts(candidate: Mapping[str, Any]) -> CandidateParts:
    """The text, thought summaries and function calls of a candidate's content."""
    content = candidate.get("content") or {}
    parts = content.get("parts") if isinstance(content, dict) else None
    if parts is None:
        return CandidateParts()
    if not isinstance(parts, list):
        raise malformed("candidate parts is not a list")
    texts: list[str] = []
    thoughts: list[str] = []
    out = CandidateParts()
    for part in parts:
        if not isinstance(part, dict):
            raise malformed("part is not an object")
        call = part.get("functionCall")
        if isinstance(call, dict):
            out.calls.append(_function_call(call, part.get("thoughtSignature")))
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") is True else texts).append(part["text"])
        # Signature-only parts, code execution and other part kinds carry no chat content.
    out.text, out.thoughts = "".join(texts), "".join(thoughts)
    return out


def _function_call(call: Mapping[str, Any], signature: Any) -> tuple[str, str, str]:
    name = call.get("name")
    if not isinstance(name, str) or not name:
        raise malformed("functionCall has no name")
    arguments = call.get("args")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise malformed("functionCall args is not an object")
    return new_call_id(signature if isinstance(signature, str) else None), name, dump(arguments)


def from_response(
    body: Any, call: UpstreamCall, *, provider: str = "", created: int | None = None
) -> chat_pb2.CreateChatCompletionResponse:
    """A whole GenerateContentResponse -> CreateChatCompletionResponse (usage unset if none reported)."""
    if not isinstance(body, dict):
        raise malformed("response is not a JSON object")
    if body.get("error"):
        raise error_in_body(body["error"])
    response = chat_pb2.CreateChatCompletionResponse(
        id=response_id(body, call), created=int(time.time()) if created is None else created,
        model=call.client_model, provider=provider,
    )
    candidates = ordered_candidates(body.get("candidates"))
    if not candidates:
        if not prompt_blocked(body):
            raise malformed("response has no candidates")
        # The prompt itself was blocked: one filtered choice, as OpenAI reports it.
        response.choices.add(index=0, message=chat_pb2.Message(role=types_pb2.ROLE_ASSISTANT), finish_reason=_FILTERED)
    for index, candidate in enumerate(candidates):
        parts = read_parts(candidate)
        # A whole answer is finished even if its candidate leaves the reason out.
        finish = gemini_to_finish_reason(candidate.get("finishReason", "STOP"), called_tools=bool(parts.calls))
        response.choices.add(index=index, message=_message(parts, has_content=bool(candidate.get("content"))),
                             finish_reason=finish, logprobs_json=logprobs_json(candidate.get("logprobsResult")))
    if isinstance(body.get("usageMetadata"), dict):
        response.usage.CopyFrom(usage_from(body["usageMetadata"]))
    return response


def _message(parts: CandidateParts, *, has_content: bool) -> chat_pb2.Message:
    """The assistant message of a whole candidate; content stays null when there is none to show."""
    message = chat_pb2.Message(role=types_pb2.ROLE_ASSISTANT)
    if parts.text or (has_content and not parts.calls):
        message.content = parts.text
    if parts.thoughts:
        message.extra_json = dump({"reasoning_content": parts.thoughts})
    for call_id, name, arguments in parts.calls:
        message.tool_calls.add(id=call_id, type="function",
                               function=chat_pb2.FunctionCall(name=name, arguments=arguments))
    return message


def response_id(body: Mapping[str, Any], call: UpstreamCall) -> str:
    """Gemini's responseId, or one made from the gateway's request id."""
    value = body.get("responseId")
    return value if isinstance(value, str) and value else f"chatcmpl-{call.request_id}"


def ordered_candidates(value: Any) -> list[dict[str, Any]]:
    """Candidates by their index (absent is 0, as proto3 JSON omits zeros); a repeated index is an error."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise malformed("candidates is not a list of objects")
    indexes = [candidate_index(c) for c in value]
    if len(set(indexes)) != len(indexes):
        raise malformed("candidates repeat an index")
    return [c for _, c in sorted(zip(indexes, value, strict=True), key=lambda pair: pair[0])]


def candidate_index(candidate: Mapping[str, Any]) -> int:
    """The upstream index of a candidate."""
    index = _count(candidate.get("index"))
    if index < 0:
        raise malformed("candidate index is negative")
    return index


def prompt_blocked(body: Mapping[str, Any]) -> bool:
    """Whether Gemini refused the prompt itself (promptFeedback.blockReason)."""
    feedback = body.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def usage_from(data: Any) -> types_pb2.Usage:
    """usageMetadata -> Usage. Thinking is output: completion = candidates + thoughts.

    promptTokenCount already includes cachedContentTokenCount; totalTokenCount
    is kept as Gemini reports it (it may also count toolUsePromptTokenCount).
    """
    if not isinstance(data, dict):
        raise malformed("usageMetadata is not an object")
    prompt = _count(data.get("promptTokenCount"))
    thoughts = _count(data.get("thoughtsTokenCount"))
    completion = _count(data.get("candidatesTokenCount")) + thoughts
    total = data.get("totalTokenCount")
    return types_pb2.Usage(
        prompt_tokens=prompt, completion_tokens=completion,
        total_tokens=prompt + completion if total is None else _count(total),
        cached_tokens=_count(data.get("cachedContentTokenCount")), reasoning_tokens=thoughts,
    )


def logprobs_json(result: Any) -> str:
    """Gemini's logprobsResult as OpenAI's logprobs object (JSON text; "" when absent)."""
    if not isinstance(result, dict):
        return ""
    chosen = result.get("chosenCandidates") or []
    tops = result.get("topCandidates") or []
    content = []
    for position, token in enumerate(chosen if isinstance(chosen, list) else []):
        top = tops[position].get("candidates") if position < len(tops) and isinstance(tops[position], dict) else None
        entry = _logprob(token)
        entry["top_logprobs"] = [_logprob(t) for t in top or []]
        content.append(entry)
    return dump({"content": content, "refusal": None})


def _logprob(token: Any) -> dict[str, Any]:
    if not isinstance(token, dict):
        raise malformed("logprob candidate is not an object")
    text = token.get("token")
    if not isinstance(text, str):
        text = ""
    value = token.get("logProbability", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise malformed("logProbability is not a number")
    return {"token": text, "logprob": value, "bytes": list(text.encode())}


def _count(value: Any) -> int:
    """A count or index; absent is 0 (proto3 JSON omits zeros). Sign and size are metering's to judge."""
    if value is None:
        return 0
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value != int(value) or abs(value) > _INT64_MAX:
        raise malformed(f"expected an integer, got {str(value)[:40]!r}")
    return int(value)
