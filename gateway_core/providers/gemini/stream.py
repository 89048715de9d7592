"""Gemini streamGenerateContent (alt=sse) events -> gateway.v1 chunks. Pure.

Every event is a whole GenerateContentResponse holding only what is new: text
increments, function calls (each arrives whole, arguments and all), a
finishReason on a candidate's last event, and usageMetadata (repeated, growing;
the last one counts). There is no [DONE]: the body's end is the end.
"""

from __future__ import annotations

import time
from typing import Any

from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import UpstreamCall
from gateway_core.providers.gemini.error_map import error_in_body
from gateway_core.providers.gemini.response import (
    candidate_index,
    gemini_to_finish_reason,
    logprobs_json,
    malformed,
    prompt_blocked,
    read_parts,
    response_id,
    usage_from,
)
from gateway_core.providers.openai.response import dump

Chunk = chat_pb2.StreamChatCompletionResponse


class StreamTranslator:
    """Maps Gemini stream events to gateway.v1 chunks.

    One per request; not thread-safe. Per-request state: the stream's id and
    created (the same on every chunk); each upstream candidate index's dense
    choice index, in order of first appearance (clients look choices up by
    position); which choices have had their role, have finished, and have
    called a function (STOP then means tool_calls); how many tool calls each
    choice has made (the dense index of its next one); and the last usage.
    """

    def __init__(self, call: UpstreamCall, *, provider: str = "", created: int | None = None) -> None:
        self._call = call
        self._provider = provider
        self._created = int(time.time()) if created is None else created
        self._id: str | None = None
        self._choices: dict[int, int] = {}
        self._started: set[int] = set()
        self._finished: set[int] = set()
        self._tool_counts: dict[int, int] = {}
        self._usage: types_pb2.Usage | None = None
        self._usage_sent = False

    @property
    def usage(self) -> types_pb2.Usage | None:
        """The last usage Gemini reported, if any."""
        return self._usage

    @property
    def finished(self) -> bool:
        """Whether every choice that started has a finish reason (an unfinished stream was cut off)."""
        return bool(self._started) and self._started <= self._finished

    def feed(self, data: Any) -> list[Chunk]:
        """The gateway chunks for one event (an in-stream error raises ProviderError)."""
        if not isinstance(data, dict):
            raise malformed("stream event is not a JSON object")
        if data.get("error"):
            raise error_in_body(data["error"])
        if self._id is None:
            self._id = response_id(data, self._call)
        if data.get("usageMetadata") is not None:
            self._usage = usage_from(data["usageMetadata"])
        candidates = data.get("candidates")
        if candidates is None:
            candidates = []
        if not isinstance(candidates, list):
            raise malformed("candidates is not a list")
        if not candidates and prompt_blocked(data) and 0 not in self._finished:
            return self._blocked()
        out: list[Chunk] = []
        for candidate in candidates:
            if not isinstance(candidate, dict):
                raise malformed("candidate is not an object")
            out.extend(self._candidate(candidate))
        return out

    def finish(self) -> list[Chunk]:
        """At the end of the body: the usage chunk (no choices), if Gemini reported usage."""
        if self._usage is None or self._usage_sent:
            return []
        self._usage_sent = True
        chunk = self._chunk()
        chunk.usage.CopyFrom(self._usage)
        return [chunk]

    def _candidate(self, candidate: dict[str, Any]) -> list[Chunk]:
        index = self._choices.setdefault(candidate_index(candidate), len(self._choices))
        parts = read_parts(candidate)
        delta = chat_pb2.Delta()
        if index not in self._started:
            self._started.add(index)
            delta.role = types_pb2.ROLE_ASSISTANT
        if parts.text:
            delta.content = parts.text
        if parts.thoughts:
            delta.extra_json = dump({"reasoning_content": parts.thoughts})
        for call_id, name, arguments in parts.calls:
            position = self._tool_counts.get(index, 0)
            self._tool_counts[index] = position + 1
            delta.tool_calls.add(index=position, id=call_id, type="function",
                                 function=chat_pb2.FunctionCallDelta(name=name, arguments=arguments))
        logprobs = logprobs_json(candidate.get("logprobsResult"))
        finish = gemini_to_finish_reason(candidate.get("finishReason"), called_tools=index in self._tool_counts)
        out = []
        if delta.ListFields() or logprobs:
            chunk = self._chunk()
            chunk.choices.add(index=index, delta=delta, logprobs_json=logprobs)
            out.append(chunk)
        if finish:
            # The finish reason goes on a delta of its own, as OpenAI sends it.
            self._finished.add(index)
            chunk = self._chunk()
            chunk.choices.add(index=index, delta=chat_pb2.Delta(), finish_reason=finish)
            out.append(chunk)
        return out

    def _blocked(self) -> list[Chunk]:
        """The prompt itself was blocked: one choice that ends filtered at once."""
        self._choices.setdefault(0, 0)
        self._started.add(0)
        self._finished.add(0)
        chunk = self._chunk()
        chunk.choices.add(index=0, delta=chat_pb2.Delta(role=types_pb2.ROLE_ASSISTANT),
                          finish_reason=types_pb2.FINISH_REASON_CONTENT_FILTER)
        return [chunk]

    def _chunk(self) -> Chunk:
        return Chunk(id=self._id or "", created=self._created, model=self._call.client_model, provider=self._provider)
