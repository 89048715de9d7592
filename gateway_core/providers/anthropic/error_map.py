"""Anthropic errors -> ProviderError, with client-safe messages. Pure.

Anthropic's error body is `{"type": "error", "error": {"type", "message"},
"request_id"}` [docs.claude.com/en/api/errors]; the same error object arrives
as an `error` event inside a stream that already answered 200. A non-2xx
answer is mapped by its status, an in-stream error by its type, through the
same table. Only an invalid request's own message reaches clients (scrubbed
of anything like a key or a URL); authentication failures log only the type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gateway_core.errors import Reason
from gateway_core.providers.base import ProviderError
from gateway_core.providers.openai.error_map import MAX_MESSAGE_CHARS, parse_retry_after, scrub

MAX_BODY_BYTES = 64 * 1024
# 529 overloaded usually comes without Retry-After; clients still deserve a
# hint, and Anthropic's own SDK starts its backoff around here.
OVERLOADED_RETRY_SECONDS = 2.0
_AUTH_FAILED = "upstream authentication failed"

# error.type -> (reason, client message); invalid_request_error keeps the upstream's own message.
_BY_TYPE: Mapping[str, tuple[Reason, str]] = {
    "invalid_request_error": (Reason.INVALID_REQUEST, ""),
    "authentication_error": (Reason.UPSTREAM_ERROR, _AUTH_FAILED),
    "permission_error": (Reason.UPSTREAM_ERROR, _AUTH_FAILED),
    "not_found_error": (Reason.UPSTREAM_ERROR, "upstream model or resource not found"),
    "request_too_large": (Reason.REQUEST_TOO_LARGE, "request is too large for the upstream provider"),
    "rate_limit_error": (Reason.UPSTREAM_RATE_LIMITED, "upstream rate limit reached"),
    "timeout_error": (Reason.UPSTREAM_TIMEOUT, "upstream timed out"),
    "api_error": (Reason.UPSTREAM_UNAVAILABLE, "upstream unavailable"),
    "overloaded_error": (Reason.UPSTREAM_UNAVAILABLE, "upstream overloaded"),
}
_TYPE_OF_STATUS: Mapping[int, str] = {
    400: "invalid_request_error", 422: "invalid_request_error",
    401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    408: "timeout_error", 504: "timeout_error", 413: "request_too_large", 429: "rate_limit_error",
    500: "api_error", 502: "api_error", 503: "api_error", 529: "overloaded_error",
}
_SECRET_TYPES = frozenset({"authentication_error", "permission_error"})
# Anthropic names the field at fault as a dotted path (messages.0.content.1.image.source.base64),
# which scrub() would take for a long secret token. Only lower-case names and indexes match,
# so nothing that looks like a key is spared.
_FIELD_PATH = re.compile(r"\b[a-z_]+(?:\.(?:\d+|[a-z_]+))+\b")
_HELD = re.compile(r"\x00(\d+)\x00")
# Anthropic reports the operator's prepaid credit running out as a 400 invalid_request_error
# ("Your credit balance is too low to access the Anthropic API. ..."): that is not the
# caller's mistake and must never read to them as *their* balance being low.
_OPERATOR_CREDIT = re.compile(r"(?i)credit balance is too low")


def map_error(
    status: int, body: bytes, retry_after: str | None = None, *, now: datetime | None = None
) -> ProviderError:
    """The ProviderError for a non-2xx answer; retry_after is its Retry-After header."""
    error = _error_object(body[:MAX_BODY_BYTES])
    kind = _TYPE_OF_STATUS.get(status)
    if kind is None:
        return ProviderError(
            Reason.UPSTREAM_ERROR, f"upstream returned HTTP {status}", upstream_status=status,
            upstream_body=_logged(error, body),
        )
    delay = parse_retry_after(retry_after, None, now or datetime.now(UTC))
    return _error(kind, error, _logged(error, body, secret=kind in _SECRET_TYPES), status=status, delay=delay)


def error_in_event(error: Any) -> ProviderError:
    """The ProviderError for an `error` event in a stream (or an error body with status 200)."""
    fields = error if isinstance(error, dict) else {}
    kind = str(fields.get("type") or "")
    text = json.dumps(error, ensure_ascii=False, default=str)
    return _error(kind, fields, _logged(fields, text.encode(), secret=kind in _SECRET_TYPES), status=None, delay=None)


def _error(kind: str, error: dict[str, Any], logged: str, *, status: int | None, delay: float | None) -> ProviderError:
    reason, message = _BY_TYPE.get(kind, (Reason.UPSTREAM_ERROR, "upstream reported an error"))
    if reason == Reason.INVALID_REQUEST and _OPERATOR_CREDIT.search(str(error.get("message", ""))):
        return ProviderError(Reason.UPSTREAM_RATE_LIMITED, "upstream quota exhausted", upstream_status=status,
                             upstream_body=logged, quota_exhausted=True)
    if reason == Reason.INVALID_REQUEST:
        message = _client_message(error)
    if kind == "overloaded_error" and delay is None:
        delay = OVERLOADED_RETRY_SECONDS
    if reason not in (Reason.UPSTREAM_RATE_LIMITED, Reason.UPSTREAM_UNAVAILABLE):
        delay = None  # a retry hint only where waiting can help
    return ProviderError(reason, message, upstream_status=status, upstream_body=logged, retry_after_seconds=delay)


def _logged(error: dict[str, Any], body: bytes, *, secret: bool = False) -> str:
    """What operators see in logs: the scrubbed body, or only the type where it may echo credentials."""
    if secret:
        return scrub(f"type={error.get('type')!s:.64}")
    return scrub(body.decode("utf-8", "replace"))


def _error_object(body: bytes) -> dict[str, Any]:
    """The error object of an Anthropic body (or a flat one), or {}."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    nested = parsed.get("error")
    return nested if isinstance(nested, dict) else parsed


def _client_message(error: dict[str, Any]) -> str:
    """The upstream's own message for a rejected request, scrubbed and truncated."""
    message = error.get("message")
    text = _scrub_keeping_paths(message).strip() if isinstance(message, str) else ""
    if not text:
        return "the upstream provider rejected the request"
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def _scrub_keeping_paths(text: str) -> str:
    """scrub(text), with Anthropic's field paths kept: they tell the client what to fix."""
    paths: list[str] = []

    def hold(match: re.Match[str]) -> str:
        paths.append(match.group())
        return f"\x00{len(paths) - 1}\x00"

    scrubbed = scrub(_FIELD_PATH.sub(hold, text.replace("\x00", "")))
    return _HELD.sub(lambda match: paths[int(match.group(1))], scrubbed)
