"""What every fake upstream's scripts produce: response plans, SSE framing, and shared script helpers.

A script turns one request into a plan; the server in http_server.py plays it.
The plans are the same for every dialect; what differs on the wire is how an
SSE event is framed, which each fake configures with an SseFraming:

    OpenAI     SseFraming(done="[DONE]")          data: {...}\\n\\n ... data: [DONE]\\n\\n
    Anthropic  SseFraming(named=True)             event: name\\ndata: {...}\\n\\n, no [DONE]
    Gemini     SseFraming(separator="\\r\\n\\r\\n")   data: {...}\\r\\n\\r\\n, no [DONE]
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

RESET_REPLY = "This answer starts well but never gets to finish."
DEFAULT_TOOL_NAMES = ("get_weather", "get_time")
TOOL_VALUES = ("Paris", "Berlin")


class Settings(Protocol):
    """The knobs and records of a fake upstream that every dialect's scripts read and write."""

    expected_key: str | None
    reply: str
    slow_interval: float
    slow_chunks: int
    hang_seconds: float
    requests: list[Any]
    usage_sent: dict[str, dict[str, Any]]


@dataclass
class JsonPlan:
    """A whole JSON response."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop_after_half: bool = False


@dataclass
class StreamPlan:
    """A 200 SSE response: the events in order, each framed by the fake's SseFraming.

    An event is JSON-able data, or a str sent as it is (to script malformed
    events); with named framing it is a (name, data) pair.
    """

    events: Iterable[Any]
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    interval: float = 0.0
    drop_after: int | None = None  # drop the connection after this many events
    together: bool = False  # every event and the end in one write (one network read), as a fast model's burst


Plan = JsonPlan | StreamPlan


@dataclass(frozen=True)
class SseFraming:
    """How a dialect writes one server-sent event, and how its stream ends."""

    separator: str = "\n\n"  # what ends each event
    named: bool = False  # events are (name, data) pairs, sent with an `event: <name>` line
    done: str | None = None  # the data of a last event that closes the stream (OpenAI's "[DONE]")

    def frame(self, event: Any) -> bytes:
        """One event on the wire."""
        name, data = event if self.named else (None, event)
        text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        head = f"event: {name}\n" if name is not None else ""
        return f"{head}data: {text}{self.separator}".encode()

    def end(self) -> bytes:
        """What follows the last event, if anything."""
        return f"data: {self.done}{self.separator}".encode() if self.done is not None else b""


def words(text: str) -> list[str]:
    """Pieces of text, each word with its leading spaces, that join back to text."""
    pieces: list[str] = []
    for index, char in enumerate(text):
        if not pieces or (char == " " and text[index - 1] != " "):
            pieces.append(char)
        else:
            pieces[-1] += char
    return pieces


def last_user_text(messages: list[Any]) -> str:
    """The text of the last user message (its text parts joined, for a list of parts)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            return content if isinstance(content, str) else ""
    return ""


def mode_of(model: str, prefix: str) -> str:
    """The failure mode a scripted model id asks for ("claude-hang" -> "hang"), or "" for other ids."""
    return model.removeprefix(prefix) if model.startswith(prefix) else ""


def json_plan(up: Settings, mode: str, body: Any) -> JsonPlan:
    """A 200 JSON answer, played as the mode says: "hang" first waits, "reset" drops the connection halfway."""
    return JsonPlan(200, body, delay=up.hang_seconds if mode == "hang" else 0.0, drop_after_half=mode == "reset")


def stream_plan(up: Settings, mode: str, events: Iterable[Any], *, reset_after: int) -> StreamPlan:
    """A stream, played as the mode says: "slow" spaces the events, "hang" first waits, "reset" drops the
    connection after `reset_after` events; any other mode sends them all at once."""
    if mode == "slow":
        return StreamPlan(events, interval=up.slow_interval)
    if mode == "hang":
        return StreamPlan(events, delay=up.hang_seconds)
    if mode == "reset":
        return StreamPlan(events, drop_after=reset_after)
    return StreamPlan(events)
