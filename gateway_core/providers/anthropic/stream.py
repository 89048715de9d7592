"""Anthropic Messages stream events -> gateway.v1 chunks. Pure.

Anthropic streams named events (message_start, content_block_start/delta/stop
per block, message_delta, message_stop; ping and error anywhere) and numbers
content blocks across kinds: a text block 0 followed by a tool_use block 1.
OpenAI clients index tool calls densely from 0 and concatenate every string
they are sent twice, so each call's id and name go out once, under its own
dense index [openai-python lib/streaming/_deltas.py].
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway_core.errors import Reason
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.anthropic.error_map import error_in_event
from gateway_core.providers.anthropic.request import response_tool_name
from gateway_core.providers.anthropic.response import (
    UsageCounts,
    anthropic_to_finish_reason,
    dump,
    malformed,
    tool_input,
)
from gateway_core.providers.base import ProviderError, UpstreamCall

Chunk = chat_pb2.StreamChatCompletionResponse


@dataclass
class _Block:
    """One content block, by kind: text, thinking, tool (a client tool call),
    answer (the response-format tool, whose input is content) or other."""

    kind: str
    tool_index: int = -1
    sent_input: bool = False


class StreamTranslator:
    """Folds one Anthropic stream into gateway.v1 chunks.

    One per request; not thread-safe. Per-request state: the message id and
    the `created` time every chunk repeats; whether the role went out (once);
    each content block by Anthropic index, with its dense tool-call index and
    whether any of its input went out (an input-less call still owes "{}");
    the stop_reason from message_delta; and the usage counts, replaced (never
    added) by each cumulative report. message_stop emits the finish chunk and
    then a usage chunk with no choices.
    """

    def __init__(self, call: UpstreamCall, *, provider: str = "", created: int | None = None) -> None:
        self._call = call
        self._provider = provider
        self._created = int(time.time()) if created is None else created
        self._response_tool = response_tool_name(call.request)
        self._id = ""
        self._role_sent = False
        self._finished = False
        self._blocks: dict[int, _Block] = {}
        self._tool_calls = 0
        self._stop_reason: Any = None
        self._usage = UsageCounts()
        self._handlers: dict[str, Callable[[dict[str, Any]], list[Chunk]]] = {
            "message_start": self._message_start,
            "content_block_start": self._block_start,
            "content_block_delta": self._block_delta,
            "content_block_stop": self._block_stop,
            "message_delta": self._message_delta,
            "message_stop": self._message_stop,
        }

    @property
    def usage(self) -> types_pb2.Usage | None:
        """The usage reported so far, if any."""
        return self._usage.usage() if self._usage.reported else None

    @property
    def finished(self) -> bool:
        """Whether message_stop arrived."""
        return self._finished

    def feed(self, event: str, data: Any) -> list[Chunk]:
        """The gateway chunks for one event (its SSE name and parsed data).

        An error event raises its mapped ProviderError; ping and event types
        this gateway does not know produce nothing.
        """
        if not isinstance(data, dict):
            raise malformed("stream event data is not a JSON object")
        kind = event if event != "message" else str(data.get("type") or "")
        if kind == "error":
            raise error_in_event(data.get("error", data))
        handler = self._handlers.get(kind)
        if handler is None or self._finished:
            return []
        return handler(data)

    def finish(self) -> list[Chunk]:
        """At the end of the body: nothing is left to send once message_stop came;
        without it the stream was cut short, which is an error."""
        if not self._finished:
            raise ProviderError(Reason.UPSTREAM_ERROR, "upstream stream ended early")
        return []

    def _message_start(self, data: dict[str, Any]) -> list[Chunk]:
        message = data.get("message")
        if not isinstance(message, dict):
            raise malformed("message_start without a message")
        if not self._id and isinstance(message.get("id"), str):
            self._id = message["id"]
        if message.get("usage") is not None:
            self._usage.update(message["usage"])
        if self._role_sent:
            return []
        return [self._chunk(chat_pb2.Delta(content=""))]

    def _block_start(self, data: dict[str, Any]) -> list[Chunk]:
        index, block = _index(data), data.get("content_block")
        if not isinstance(block, dict):
            raise malformed("content_block_start without a content block")
        kind = block.get("type")
        if kind == "tool_use":
            return self._tool_start(index, block)
        if kind == "text":
            self._blocks[index] = _Block("text")
            return self._content(block.get("text"))
        if kind == "thinking":
            self._blocks[index] = _Block("thinking")
            return self._reasoning(block.get("thinking"))
        self._blocks[index] = _Block("other")  # redacted thinking, server tools: nothing for the client
        return []

    def _tool_start(self, index: int, block: dict[str, Any]) -> list[Chunk]:
        initial = tool_input(block)  # normally {}: the input follows as input_json_delta
        if self._response_tool is not None and block.get("name") == self._response_tool:
            state = self._blocks[index] = _Block("answer", sent_input=bool(initial))
            return self._content(dump(initial)) if state.sent_input else []
        state = self._blocks[index] = _Block("tool", tool_index=self._tool_calls, sent_input=bool(initial))
        self._tool_calls += 1
        function = chat_pb2.FunctionCallDelta(
            name=block.get("name") if isinstance(block.get("name"), str) else "",
            arguments=dump(initial) if initial else "",
        )
        call = chat_pb2.ToolCallDelta(
            index=state.tool_index, id=block.get("id") if isinstance(block.get("id"), str) else "",
            type="function", function=function,
        )
        return [self._chunk(chat_pb2.Delta(tool_calls=[call]))]

    def _block_delta(self, data: dict[str, Any]) -> list[Chunk]:
        index, delta = _index(data), data.get("delta")
        if not isinstance(delta, dict):
            raise malformed("content_block_delta without a delta")
        kind = delta.get("type")
        if kind == "text_delta":
            return self._content(delta.get("text"))
        if kind == "thinking_delta":
            return self._reasoning(delta.get("thinking"))
        if kind == "input_json_delta":
            return self._input(index, delta.get("partial_json"))
        return []  # signature_delta, citations_delta: nothing an OpenAI client can use

    def _input(self, index: int, fragment: Any) -> list[Chunk]:
        state = self._blocks.get(index)
        if state is None:
            raise malformed("input_json_delta for a block that never started")
        if not isinstance(fragment, str) or not fragment or state.kind not in ("tool", "answer"):
            return []
        state.sent_input = True
        if state.kind == "answer":
            return self._content(fragment)
        call = chat_pb2.ToolCallDelta(index=state.tool_index, function=chat_pb2.FunctionCallDelta(arguments=fragment))
        return [self._chunk(chat_pb2.Delta(tool_calls=[call]))]

    def _block_stop(self, data: dict[str, Any]) -> list[Chunk]:
        state = self._blocks.get(_index(data))
        if state is None or state.kind not in ("tool", "answer") or state.sent_input:
            return []
        # A call without input fragments still needs arguments a client can json.loads.
        return self._input(_index(data), "{}")

    def _message_delta(self, data: dict[str, Any]) -> list[Chunk]:
        delta = data.get("delta")
        if isinstance(delta, dict) and "stop_reason" in delta:
            self._stop_reason = delta["stop_reason"]
        if data.get("usage") is not None:
            self._usage.update(data["usage"])
        return []

    def _message_stop(self, data: dict[str, Any]) -> list[Chunk]:
        finish = anthropic_to_finish_reason(self._stop_reason, called_tools=self._tool_calls > 0)
        self._finished = True
        chunks = [self._chunk(chat_pb2.Delta(), finish=finish)]
        if self._usage.reported:
            last = self._base()
            last.usage.CopyFrom(self._usage.usage())
            chunks.append(last)
        return chunks

    def _content(self, text: Any) -> list[Chunk]:
        if not isinstance(text, str) or not text:
            return []
        return [self._chunk(chat_pb2.Delta(content=text))]

    def _reasoning(self, text: Any) -> list[Chunk]:
        if not isinstance(text, str) or not text:
            return []
        return [self._chunk(chat_pb2.Delta(extra_json=dump({"reasoning_content": text})))]

    def _chunk(
        self, delta: chat_pb2.Delta, *, finish: types_pb2.FinishReason = types_pb2.FINISH_REASON_UNSPECIFIED
    ) -> Chunk:
        if not self._role_sent:
            # The role goes on the first delta only: clients concatenate repeats.
            self._role_sent = True
            delta.role = types_pb2.ROLE_ASSISTANT
        chunk = self._base()
        chunk.choices.add(index=0, delta=delta, finish_reason=finish)
        return chunk

    def _base(self) -> Chunk:
        return Chunk(id=self._id, created=self._created, model=self._call.client_model, provider=self._provider)


def _index(data: dict[str, Any]) -> int:
    value = data.get("index")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise malformed("content block event without a valid index")
    return value
