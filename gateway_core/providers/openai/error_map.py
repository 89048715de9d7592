"""OpenAI-style upstream errors -> ProviderError, with client-safe messages. Pure.

The table is the whole policy: only a 400/422's own message reaches clients
(after anything that looks like a key or a URL is scrubbed out); auth
failures never carry the body, because OpenAI echoes the key there.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from gateway_core.errors import Reason
from gateway_core.providers.base import ProviderError

MAX_MESSAGE_CHARS = 500
MAX_BODY_BYTES = 64 * 1024
# Validation problems quoted from one error body.
_MAX_PROBLEMS = 5

_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_BEARER = re.compile(r"(?i)\bbearer\s+[^\s'\"]+")
_PREFIXED_KEY = re.compile(r"\b(?:sk|gsk|xai|pk|rk)[-_][A-Za-z0-9_\-*.]{4,}")
_LONG_TOKEN = re.compile(r"[A-Za-z0-9_\-+/=*.~]{20,}")
_HEX = re.compile(r"[0-9a-fA-F]{32,}")
REDACTED = "[redacted]"


def map_error(
    status: int,
    body: bytes,
    retry_after: str | None = None,
    *,
    retry_after_ms: str | None = None,
    now: datetime | None = None,
) -> ProviderError:
    """The ProviderError for a non-2xx upstream answer.

    retry_after and retry_after_ms are the response's Retry-After and
    retry-after-ms headers; now (for HTTP-date Retry-After) defaults to the
    current time.
    """
    body = body[:MAX_BODY_BYTES]
    error = _error_object(body)
    if status in (401, 403):
        # OpenAI echoes the key in these messages: only code and type reach the logs.
        logged = scrub(f"code={error.get('code')!s:.64} type={error.get('type')!s:.64}")
    else:
        logged = scrub(body.decode("utf-8", "replace"))

    def fail(reason: Reason, message: str, *, param: str | None = None, delay: float | None = None) -> ProviderError:
        return ProviderError(
            reason, message, upstream_status=status, upstream_body=logged, param=param, retry_after_seconds=delay
        )

    if status in (400, 422):
        return fail(Reason.INVALID_REQUEST, _client_message(error), param=_param(error))
    if status in (401, 403):
        return fail(Reason.UPSTREAM_ERROR, "upstream authentication failed")
    if status in (408, 504):
        return fail(Reason.UPSTREAM_TIMEOUT, "upstream timed out")
    delay = parse_retry_after(retry_after, retry_after_ms, now or datetime.now(UTC))
    if status == 429:
        if "insufficient_quota" in (error.get("code"), error.get("type")):
            # The operator's account is out of credit: not the caller's balance, and not soon over.
            return ProviderError(Reason.UPSTREAM_RATE_LIMITED, "upstream quota exhausted", upstream_status=status,
                                 upstream_body=logged, quota_exhausted=True)
        return fail(Reason.UPSTREAM_RATE_LIMITED, "upstream rate limit reached", delay=delay)
    if status in (500, 502, 503, 529):
        return fail(Reason.UPSTREAM_UNAVAILABLE, "upstream unavailable", delay=delay)
    return fail(Reason.UPSTREAM_ERROR, f"upstream returned HTTP {status}")


def error_in_body(error: Any) -> ProviderError:
    """The ProviderError for an `{"error": ...}` object sent with a 200 status or inside a stream."""
    fields = error if isinstance(error, dict) else {}
    code, kind = str(fields.get("code") or ""), str(fields.get("type") or "")
    logged = scrub(json.dumps(error, ensure_ascii=False, default=str))
    if "rate_limit" in code or "rate_limit" in kind or code == "429":
        return ProviderError(Reason.UPSTREAM_RATE_LIMITED, "upstream rate limit reached", upstream_body=logged)
    if kind in ("server_error", "overloaded_error") or code.startswith("5"):
        return ProviderError(Reason.UPSTREAM_UNAVAILABLE, "upstream unavailable", upstream_body=logged)
    return ProviderError(Reason.UPSTREAM_ERROR, "upstream reported an error", upstream_body=logged)


def parse_retry_after(retry_after: str | None, retry_after_ms: str | None, now: datetime) -> float | None:
    """Seconds to wait, from retry-after-ms, or Retry-After as seconds or an HTTP date."""
    if retry_after_ms:
        milliseconds = _non_negative(retry_after_ms)
        if milliseconds is not None:
            return milliseconds / 1000
    if not retry_after:
        return None
    seconds = _non_negative(retry_after)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(retry_after)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


def scrub(text: str) -> str:
    """text without URLs, bearer tokens, API keys or other long secret-looking tokens."""
    text = _URL.sub("[url]", text)
    text = _BEARER.sub("Bearer " + REDACTED, text)
    text = _PREFIXED_KEY.sub(REDACTED, text)
    return _LONG_TOKEN.sub(_redact_if_secret, text)


def _redact_if_secret(match: re.Match[str]) -> str:
    """Long runs with digits and capitals (API keys, AWS ids, JWT pieces) go; snake_case names stay."""
    token = match.group()
    has_digit = any(c.isdigit() for c in token)
    if (has_digit and any(c.isupper() for c in token)) or len(token) >= 40 or _HEX.search(token):
        return REDACTED
    if has_digit and len(token) >= 32:
        return REDACTED
    return token


def _error_object(body: bytes) -> dict[str, Any]:
    """The error object of an OpenAI-style body, or {}.

    OpenAI nests it (`{"error": {...}}`); Mistral, vLLM and others send it
    flat (`{"object": "error", "message": ..., "type": ..., "code": ...}`), and
    some just `{"error": "text"}` or FastAPI's `{"detail": ...}`.
    """
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    nested = parsed.get("error")
    if isinstance(nested, dict):
        return nested
    if isinstance(nested, str) and "message" not in parsed:
        return {"message": nested}
    return parsed


def _client_message(error: dict[str, Any]) -> str:
    """The upstream's own message for a rejected request, scrubbed and truncated."""
    text = scrub(_message_text(error)).strip()
    if not text:
        return "the upstream provider rejected the request"
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def _message_text(error: dict[str, Any]) -> str:
    """The message, also when it is a validation report (Mistral sends pydantic's,
    as an object, a list or JSON text inside the string)."""
    message = error.get("message") or error.get("detail")
    if isinstance(message, str) and message.lstrip().startswith(("{", "[")):
        try:
            message = json.loads(message)
        except ValueError:
            pass
    if isinstance(message, dict):
        message = message.get("detail") or message.get("message")
    if isinstance(message, str):
        return message
    if isinstance(message, list):
        return "; ".join(filter(None, (_problem(item) for item in message[:_MAX_PROBLEMS])))
    return ""


def _problem(item: Any) -> str:
    """One pydantic validation problem as "where: what" (its "input" is never echoed)."""
    if not isinstance(item, dict) or not isinstance(item.get("msg"), str):
        return ""
    where = ".".join(str(part) for part in _location(item))
    return f"{where}: {item['msg']}" if where else item["msg"]


def _location(item: dict[str, Any]) -> list[Any]:
    loc = item.get("loc")
    if not isinstance(loc, list):
        return []
    return loc[1:] if loc[:1] == ["body"] else loc


def _param(error: dict[str, Any]) -> str | None:
    """The parameter at fault: the error's own, or a validation report's top-level field."""
    param = error.get("param")
    if isinstance(param, str) and param:
        return param
    message = error.get("message") or error.get("detail")
    if isinstance(message, dict):
        message = message.get("detail")
    if isinstance(message, list) and message and isinstance(message[0], dict):
        where = _location(message[0])
        if len(where) == 1 and isinstance(where[0], str):
            return where[0]
    return None


def _non_negative(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
