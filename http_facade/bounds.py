"""Bounds on a parsed request body: depth, array lengths, string sizes, counts.

Runs on the whole JSON document before any field is converted, so a structure
bomb is refused in one linear pass whatever field it hides in (including the
ones that travel on as `extra_json`). Type errors are left to the converters;
a value is only bounded here when it has the type its bound is about. Errors
use OpenAI's wording and name the offending `param` ("messages[3].content").
"""

from __future__ import annotations

from typing import Any

from http_facade.edge_limits import OPENAI_MAX_TOOLS, EdgeLimits
from http_facade.errors import invalid_request

# Short identifiers: a longer one is a mistake or an attack, never a real id.
_NAME_FIELDS = ("model", "user", "safety_identifier", "prompt_cache_key")
_MAX_NAME_CHARS = 256


class _TooBig(Exception):
    """A bound was broken; carries the message and the path walked so far (innermost first)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.path: list[str | int] = []


def check_bounds(payload: dict[str, Any], limits: EdgeLimits, body: bytes | None = None) -> None:
    """Raises a 400 naming the param if payload breaks one of limits' bounds.

    body, the JSON text payload was parsed from, lets a document that cannot
    break the size bounds skip the walk (see _walk_needed).
    """
    if body is None or _walk_needed(body, limits):
        try:
            _walk(payload, 1, limits)
        except _TooBig as exc:
            param = _param(reversed(exc.path))
            raise invalid_request(exc.message.format(param=param), param or None, exc.code) from None
    _check_top_level(payload, limits)


def _walk_needed(body: bytes, limits: EdgeLimits) -> bool:
    """Whether the JSON text body could break a depth, array or string bound at all.

    Each bound needs a minimum of raw text, counted here by C-speed scans
    instead of a Python walk of every value: a decoded string (or key) never
    has more characters than the text has bytes; an array of n items has n-1
    commas; a container nested d deep has d opening brackets. Brackets and
    commas inside strings only make the counts larger, so a False is always
    safe; only ordinary, small requests get it.
    """
    return (
        len(body) > limits.max_string_chars
        or body.count(b",") + 1 > limits.max_array_items
        or body.count(b"{") + body.count(b"[") > limits.max_json_depth
    )


def _walk(value: Any, depth: int, limits: EdgeLimits) -> None:
    """Recursive, but never deeper than limits.max_json_depth (at most MAX_JSON_DEPTH)."""
    if isinstance(value, str):
        _check_string(value, limits)
        return
    if isinstance(value, dict):
        children: Any = value.items()
        for key in value:
            _check_string(key, limits)  # reported as the object's own param
    elif isinstance(value, list):
        if len(value) > limits.max_array_items:
            raise _TooBig(_array_too_long(limits.max_array_items, len(value)), "array_above_max_length")
        children = enumerate(value)
    else:
        return
    if depth > limits.max_json_depth:
        raise _TooBig(
            f"Invalid '{{param}}': JSON nested too deeply. Expected at most {limits.max_json_depth} "
            "levels of arrays and objects.",
            "json_too_deep",
        )
    for key, child in children:
        try:
            _walk(child, depth + 1, limits)
        except _TooBig as exc:
            exc.path.append(key)
            raise


def _check_string(value: str, limits: EdgeLimits) -> None:
    if len(value) > limits.max_string_chars:
        raise _TooBig(
            f"Invalid '{{param}}': string too long. Expected a string with maximum length "
            f"{limits.max_string_chars}, but got a string with length {len(value)} instead.",
            "string_above_max_length",
        )


def _check_top_level(payload: dict[str, Any], limits: EdgeLimits) -> None:
    messages = payload.get("messages")
    _max_length(messages, "messages", limits.max_messages)
    # Only the bounded fields the request has are looked at (most have one or two of these nine);
    # checked in the order listed in _TOP_LEVEL, so the first broken bound is the one reported.
    for field in _TOP_LEVEL:
        if field not in payload:
            continue
        value = payload[field]
        if field == "tools":
            _max_length(value, "tools", OPENAI_MAX_TOOLS)
        elif field in _NAME_FIELDS:
            _short(value, field)
        else:
            _at_most(value, field, limits.max_n if field == "n" else limits.max_tokens_ceiling)
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        # (`in` before any call: few messages carry a name or a tool_call_id.)
        if isinstance(message, dict) and ("name" in message or "tool_call_id" in message):
            for field in ("name", "tool_call_id"):
                value = message.get(field)
                if isinstance(value, str) and len(value) > _MAX_NAME_CHARS:  # the param is named only then
                    _short(value, f"messages[{i}].{field}")


# The top-level fields with a bound of their own besides `messages`, in the order they are checked.
_TOP_LEVEL = ("tools", "n", "max_tokens", "max_completion_tokens", *_NAME_FIELDS)


def _max_length(value: Any, param: str, limit: int) -> None:
    if isinstance(value, list) and len(value) > limit:
        message = _array_too_long(limit, len(value)).format(param=param)
        raise invalid_request(message, param, "array_above_max_length")


def _at_most(value: Any, param: str, limit: int) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value > limit:
        raise invalid_request(
            f"Invalid '{param}': integer above maximum value. "
            f"Expected a value <= {limit}, but got {value} instead.",
            param,
            "integer_above_max_value",
        )


def _short(value: Any, param: str) -> None:
    if isinstance(value, str) and len(value) > _MAX_NAME_CHARS:
        raise invalid_request(
            f"Invalid '{param}': string too long. Expected a string with maximum length "
            f"{_MAX_NAME_CHARS}, but got a string with length {len(value)} instead.",
            param,
            "string_above_max_length",
        )


def _array_too_long(limit: int, length: int) -> str:
    return (
        f"Invalid '{{param}}': array too long. Expected an array with maximum length {limit}, "
        f"but got an array with length {length} instead."
    )


def _param(path: Any) -> str:
    """OpenAI's spelling of a JSON path: messages[0].content[1].text."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text

