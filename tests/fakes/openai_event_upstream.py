"""A fake OpenAI upstream that streams the exact chunk events a test lists, all in one write or one by one.

    with EventStreamUpstream({"text": [first(), text("a"), text("b"), finish(), usage(5, 2)]}) as up:
        ...  # upstream model "text@together": every event (and [DONE]) in one write
             # upstream model "text@spaced":   each event its own write, in lockstep with the client

For what depends on how a stream is cut into network reads: events written
together reach the gateway in one read (as a fast model's tokens, or any
stream when the gateway is behind), spaced ones in a read each (as a model
generates them). Spacing by time alone would not be enough on a loaded
machine (a gateway that stalls longer than the gap reads two events at
once), so a spaced event is written only once the client has counted, in
`delivered`, a chunk for every event before it: the gateway has read each
event before the next exists (after LOCKSTEP_SECONDS without that count it
is written anyway, and the test sees why). The events are
chat.completion.chunk objects in OpenAI's wire format (the builders below),
or a raw str sent as the event's data. The HTTP side (h11, request records,
TCP_NODELAY) is FakeOpenAIUpstream's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.fakes.plans import Plan, StreamPlan

LOCKSTEP_SECONDS = 5.0  # how long a spaced event waits for the client's count before it goes anyway
STREAM_ID = "chatcmpl-events"
CREATED = 1700000000


class EventStreamUpstream(FakeOpenAIUpstream):
    """Streams a named event list for upstream model "<name>@together" or "<name>@spaced".

    A test reading a spaced stream adds one to `delivered` per chunk it receives (start() of a new
    stream: set it to 0 first).
    """

    def __init__(self, streams: Mapping[str, Sequence[Any]], expected_key: str | None = None) -> None:
        super().__init__(expected_key)
        self.streams = dict(streams)
        self.delivered = 0

    def plan_for(self, method: str, target: str, headers: dict[str, str], body: Any) -> Plan:
        model = body.get("model") if isinstance(body, dict) else None
        name, _, how = str(model).partition("@")
        if method == "POST" and name in self.streams and how in ("together", "spaced"):
            events = self.streams[name]
            return StreamPlan(events, together=True) if how == "together" else StreamPlan(self._lockstep(events))
        return super().plan_for(method, target, headers, body)

    def _lockstep(self, events: Sequence[Any]) -> Iterator[Any]:
        """events, each after the client counted a chunk for every one before it (blocks the fake's own loop,
        which has only this stream to serve; what was written before has left)."""
        for number, event in enumerate(events):
            deadline = time.monotonic() + LOCKSTEP_SECONDS
            while self.delivered < number and time.monotonic() < deadline:
                time.sleep(0.001)
            yield event


def chunk(choices: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """A chat.completion.chunk with these choices (and e.g. system_fingerprint, service_tier, usage)."""
    return {"id": STREAM_ID, "object": "chat.completion.chunk", "created": CREATED, "model": "gpt-events",
            **fields, "choices": choices}


def first(index: int = 0, **fields: Any) -> dict[str, Any]:
    """A choice's first delta: the role and empty content."""
    return chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], **fields)


def text(content: str, index: int = 0, **fields: Any) -> dict[str, Any]:
    """A text-only delta."""
    return chunk([{"index": index, "delta": {"content": content}, "finish_reason": None}], **fields)


def text_with_logprobs(content: str, logprob: float = -0.25) -> dict[str, Any]:
    """A text delta with its token's logprobs, as OpenAI sends them when asked."""
    logprobs = {"content": [{"token": content, "logprob": logprob, "bytes": list(content.encode()),
                             "top_logprobs": []}], "refusal": None}
    return chunk([{"index": 0, "delta": {"content": content}, "logprobs": logprobs, "finish_reason": None}])


def tool_call(index: int, *, arguments: str, call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    """A tool-call delta: its opening (id and name) or an arguments fragment."""
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return chunk([{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}])


def finish(reason: str = "stop", index: int = 0) -> dict[str, Any]:
    """A choice's last chunk: an empty delta and its finish_reason."""
    return chunk([{"index": index, "delta": {}, "finish_reason": reason}])


def usage(prompt: int, completion: int) -> dict[str, Any]:
    """The usage chunk (no choices) that include_usage asks for."""
    return chunk([], usage={"prompt_tokens": prompt, "completion_tokens": completion,
                            "total_tokens": prompt + completion})


def error(message: str = "The server is overloaded.") -> dict[str, Any]:
    """An error in the stream's body, as vLLM and OpenAI-compatible servers send one mid-stream."""
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
