"""What the mock provider says: reply text and tool-call arguments, all deterministic."""

from __future__ import annotations

import json
from typing import Any

from gateway_core.pb.gateway.v1 import types_pb2
from gateway_core.providers.base import ChatRequest

_OPENINGS = (
    "Thanks for asking about {topic}.",
    "Here is a calm, offline answer about {topic}.",
    "You asked about {topic}, and that is a fine thing to ask.",
    "Let us talk about {topic} for a moment.",
)
_SENTENCES = (
    "This reply comes from Tollgate's built-in mock model, so nothing was sent upstream.",
    "The same question will always get this same answer.",
    "A real model would go into much more detail here.",
    "Every word of this reply is counted, just as a real one would be.",
    "Mock replies are handy for trying the gateway without any provider keys.",
    "Have a pleasant day, and good luck with the rest of your project.",
    "Short answers are sometimes the most useful ones.",
)
_TOPIC_WORDS = 8
_RESULT_CHARS = 200
_MAX_SCHEMA_DEPTH = 8


def last_user_text(request: ChatRequest) -> str:
    """The text of the last user message (its text parts joined), or ""."""
    for message in reversed(request.messages):
        if message.role == types_pb2.ROLE_USER:
            if message.parts:
                return "".join(part.text for part in message.parts if part.WhichOneof("part") == "text")
            return message.content
    return ""


def chat_reply(request: ChatRequest, seed: bytes) -> str:
    """Two or three sentences chosen by seed, the first naming the user's topic."""
    words = last_user_text(request).split()
    topic = f"“{' '.join(words[:_TOPIC_WORDS])}”" if words else "your message"
    sentences = [_OPENINGS[seed[0] % len(_OPENINGS)].format(topic=topic)]
    first = seed[1] % len(_SENTENCES)
    sentences.append(_SENTENCES[first])
    if seed[2] % 2:
        sentences.append(_SENTENCES[(first + 1 + seed[3] % (len(_SENTENCES) - 1)) % len(_SENTENCES)])
    return " ".join(sentences)


def tool_result_reply(request: ChatRequest) -> str:
    """A sentence per trailing tool result, naming the function that produced it."""
    names = {call.id: call.function.name for m in request.messages for call in m.tool_calls}
    results = []
    for message in reversed(request.messages):
        if message.role != types_pb2.ROLE_TOOL:
            break
        content = message.content or "".join(p.text for p in message.parts if p.WhichOneof("part") == "text")
        if len(content) > _RESULT_CHARS:
            content = content[:_RESULT_CHARS] + "…"
        name = names.get(message.tool_call_id, "tool")
        results.append(f"The {name} tool returned {content}.")
    return " ".join(reversed(results)) + " That is everything I needed."


def arguments_for(parameters_json: str) -> str:
    """Compact JSON arguments for a function: its required properties, filled with placeholders."""
    try:
        schema = json.loads(parameters_json) if parameters_json else {}
    except ValueError:
        schema = {}
    value = _placeholder(schema, "value", 0) if isinstance(schema, dict) and schema else {}
    if not isinstance(value, dict):
        value = {}
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _placeholder(schema: Any, name: str, depth: int) -> Any:
    """A value of the schema's type: its const, first enum value or default if any."""
    if not isinstance(schema, dict) or depth > _MAX_SCHEMA_DEPTH:
        return f"example {name}"
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _placeholder(schema[key][0], name, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and isinstance(schema.get("properties"), dict):
        kind = "object"
    return _typed_placeholder(schema, kind, name, depth)


def _typed_placeholder(schema: dict[str, Any], kind: object, name: str, depth: int) -> Any:
    if kind == "object":
        properties, required = schema.get("properties"), schema.get("required")
        if not isinstance(properties, dict):
            properties = {}
        if not isinstance(required, list):
            required = []
        return {key: _placeholder(properties.get(key), key, depth + 1) for key in required if isinstance(key, str)}
    if kind == "array":
        return [_placeholder(schema.get("items"), name, depth + 1)]
    if kind == "integer":
        minimum = schema.get("minimum")
        return minimum if isinstance(minimum, int) and not isinstance(minimum, bool) else 1
    if kind == "number":
        minimum = schema.get("minimum")
        return minimum if isinstance(minimum, (int, float)) and not isinstance(minimum, bool) else 1.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return f"example {name}"
