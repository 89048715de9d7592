"""An OpenAI chat.completions body -> the same request in one vendor's dialect. Pure.

Applied last, to the body request.py built, so every rule sees exactly what
would go on the wire: only fields the client set are there, and a parameter
the client put in extra_json is caught like a modelled one.
"""

from __future__ import annotations

import hashlib
import re
import string
from typing import Any

from gateway_core.errors import GatewayError, Reason
from gateway_core.providers.openai.vendors import MAX_COMPLETION_TOKENS, MAX_TOKENS, Dialect

# What the gateway itself decides; never an "unsupported parameter" whatever the settings say.
_STRUCTURAL = frozenset({"model", "messages", "stream", "stream_options", MAX_TOKENS, MAX_COMPLETION_TOKENS})
_MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")
_BASE62 = string.digits + string.ascii_letters
_MISTRAL_ID_LENGTH = 9


def adapt(body: dict[str, Any], dialect: Dialect) -> tuple[str, ...]:
    """Rewrites body in place for dialect; returns the parameters it dropped.

    Raises UNSUPPORTED_PARAMETER for the first unsupported parameter the
    client set when the dialect refuses them.
    """
    _one_output_limit(body, dialect.limit_field)
    dropped = _unsupported(body, dialect)
    profile = dialect.profile
    for name, vendor_name in profile.renames:
        if name in body:
            body[vendor_name] = body.pop(name)
    if profile.zero_temperature is not None and body.get("temperature") == 0:
        body["temperature"] = profile.zero_temperature
    if profile.streams_usage_unasked:
        body.pop("stream_options", None)
    for message in body["messages"]:
        if not isinstance(message, dict):
            continue
        for field in profile.dropped_message_fields:
            message.pop(field, None)
        if profile.developer_as_system and message.get("role") == "developer":
            message["role"] = "system"
        if profile.short_tool_call_ids:
            _shorten_tool_call_ids(message)
    return dropped


def mistral_tool_call_id(call_id: str) -> str:
    """call_id as Mistral accepts it: kept if already 9 alphanumerics, else 9 base62
    characters of its SHA-256, so the same id maps the same way in every request
    (an assistant's tool_calls and the tool results that answer them must agree)."""
    if _MISTRAL_ID.fullmatch(call_id):
        return call_id
    # 62**9 < 2**64: eight bytes of the digest cover every 9-character id.
    number = int.from_bytes(hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).digest()[:8], "big")
    characters = []
    for _ in range(_MISTRAL_ID_LENGTH):
        number, digit = divmod(number, len(_BASE62))
        characters.append(_BASE62[digit])
    return "".join(characters)


def _one_output_limit(body: dict[str, Any], field: str | None) -> None:
    """Sends the output limit once, under the dialect's name.

    The value is the one the hold was computed from: max_completion_tokens
    when the client set both (as metering.usage.apply_output_limit decides).
    """
    modern, legacy = body.pop(MAX_COMPLETION_TOKENS, None), body.pop(MAX_TOKENS, None)
    value = legacy if modern is None else modern
    if value is None:
        return
    body[field or (MAX_TOKENS if modern is None else MAX_COMPLETION_TOKENS)] = value


def _unsupported(body: dict[str, Any], dialect: Dialect) -> tuple[str, ...]:
    """Removes (or refuses) the unsupported parameters the client set, in body order."""
    found = [
        name for name in body
        if name not in _STRUCTURAL and (name in dialect.unsupported or _is_extra_choice(name, body, dialect))
    ]
    if found and not dialect.drop_unsupported:
        name = found[0]
        raise GatewayError(
            Reason.UNSUPPORTED_PARAMETER,
            f"Unsupported parameter: '{name}' is not supported by this model's provider.",
            param=name,
        )
    for name in found:
        del body[name]
    return tuple(found)


def _is_extra_choice(name: str, body: dict[str, Any], dialect: Dialect) -> bool:
    """n other than 1 at a vendor that only ever answers with one choice."""
    return name == "n" and dialect.profile.single_choice and body["n"] != 1


def _shorten_tool_call_ids(message: dict[str, Any]) -> None:
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        for call in tool_calls:
            if isinstance(call, dict) and isinstance(call.get("id"), str):
                call["id"] = mistral_tool_call_id(call["id"])
    if isinstance(message.get("tool_call_id"), str):
        message["tool_call_id"] = mistral_tool_call_id(message["tool_call_id"])
