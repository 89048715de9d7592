"""Gemini API errors -> ProviderError, with client-safe messages. Pure.

Gemini's error body is google.rpc.Status as JSON, `{"error": {"code",
"message", "status", "details"}}` (a one-element list around it on some
streaming paths). The table is the whole policy:

    400, 413, 422 (INVALID_ARGUMENT, FAILED_PRECONDITION)  INVALID_REQUEST, Gemini's message scrubbed
    400 with an ErrorInfo reason API_KEY_*, 401, 403       UPSTREAM_ERROR "upstream authentication failed"
    404                                                    UPSTREAM_ERROR
    408, 504 (DEADLINE_EXCEEDED)                           UPSTREAM_TIMEOUT
    429 (RESOURCE_EXHAUSTED)                               UPSTREAM_RATE_LIMITED, delay from Retry-After
                                                           or a RetryInfo detail ("retryDelay": "7s")
    500, 502, 503 (INTERNAL, UNAVAILABLE)                  UPSTREAM_UNAVAILABLE

A bad key is a 400 ("API key not valid", reason API_KEY_INVALID), not a 401,
and must not read as the client's mistake. Auth failures never keep any body
text, even for operator logs: Gemini's 403s can quote the key
("Consumer 'api_key:AIza...' has been suspended").
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from gateway_core.errors import Reason
from gateway_core.providers.base import ProviderError
from gateway_core.providers.openai import error_map as openai_errors

MAX_BODY_BYTES = 64 * 1024
REDACTED = openai_errors.REDACTED
# Google API keys: "AIza" and 35 more characters; scrub() alone misses those without digits.
_GOOGLE_KEY = re.compile(r"AIza[0-9A-Za-z_\-]{30,}")
_DURATION = re.compile(r"(\d{1,9}(?:\.\d{0,9})?)s")
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"


def map_error(status: int, body: bytes, retry_after: str | None = None, *, now: datetime | None = None) -> ProviderError:
    """The ProviderError for a non-2xx Gemini answer; retry_after is the Retry-After header."""
    error = error_object(body[:MAX_BODY_BYTES])
    auth_failure = status in (401, 403) or (status == 400 and _is_key_problem(error))
    if auth_failure:
        logged = f"status={_field(error, 'status')} reasons={','.join(_reasons(error))[:128]}"
    else:
        logged = scrub(body[:MAX_BODY_BYTES].decode("utf-8", "replace"))

    def fail(reason: Reason, message: str, *, delay: float | None = None) -> ProviderError:
        return ProviderError(reason, message, upstream_status=status, upstream_body=logged, retry_after_seconds=delay)

    if auth_failure:
        return fail(Reason.UPSTREAM_ERROR, "upstream authentication failed")
    if status in (400, 413, 422):
        return fail(Reason.INVALID_REQUEST, client_message(error))
    if status in (408, 504):
        return fail(Reason.UPSTREAM_TIMEOUT, "upstream timed out")
    delay = openai_errors.parse_retry_after(retry_after, None, now or datetime.now(UTC))
    if delay is None:
        delay = retry_delay(error)
    if status == 429 and _daily_quota_spent(error):
        # A per-day quota will not come back in seconds: the operator's quota is spent.
        return ProviderError(Reason.UPSTREAM_RATE_LIMITED, "upstream quota exhausted", upstream_status=status,
                             upstream_body=logged, quota_exhausted=True)
    if status == 429:
        return fail(Reason.UPSTREAM_RATE_LIMITED, "upstream rate limit reached", delay=delay)
    if status in (500, 502, 503):
        return fail(Reason.UPSTREAM_UNAVAILABLE, "upstream unavailable", delay=delay)
    return fail(Reason.UPSTREAM_ERROR, f"upstream returned HTTP {status}")


def error_in_body(error: Any) -> ProviderError:
    """The ProviderError for an `{"error": ...}` object inside a 200 answer or a stream."""
    fields = error if isinstance(error, dict) else {}
    code, status = fields.get("code"), str(fields.get("status") or "")
    logged = scrub(json.dumps(error, ensure_ascii=False, default=str))
    if code == 429 or status == "RESOURCE_EXHAUSTED":
        return ProviderError(Reason.UPSTREAM_RATE_LIMITED, "upstream rate limit reached", upstream_body=logged,
                             retry_after_seconds=retry_delay(fields))
    if code == 504 or status == "DEADLINE_EXCEEDED":
        return ProviderError(Reason.UPSTREAM_TIMEOUT, "upstream timed out", upstream_body=logged)
    if code in (500, 503) or status in ("INTERNAL", "UNAVAILABLE"):
        return ProviderError(Reason.UPSTREAM_UNAVAILABLE, "upstream unavailable", upstream_body=logged)
    return ProviderError(Reason.UPSTREAM_ERROR, "upstream reported an error", upstream_body=logged)


def retry_delay(error: dict[str, Any]) -> float | None:
    """Seconds from a google.rpc.RetryInfo detail ("retryDelay": "7s" or "0.5s"), if there is one."""
    for detail in _details(error):
        if detail.get("@type") == _RETRY_INFO:
            match = _DURATION.fullmatch(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def scrub(text: str) -> str:
    """text without URLs, bearer tokens, Google API keys or other secret-looking tokens."""
    return openai_errors.scrub(_GOOGLE_KEY.sub(REDACTED, text))


def client_message(error: dict[str, Any]) -> str:
    """Gemini's own message for a rejected request, scrubbed and truncated."""
    message = error.get("message")
    text = scrub(message).strip() if isinstance(message, str) else ""
    if not text:
        return "the upstream provider rejected the request"
    limit = openai_errors.MAX_MESSAGE_CHARS
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_object(body: bytes) -> dict[str, Any]:
    """The `error` object of a Gemini error body (bare, or in a one-element list), or {}."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    if isinstance(parsed, list) and len(parsed) == 1:
        parsed = parsed[0]
    nested = parsed.get("error") if isinstance(parsed, dict) else None
    return nested if isinstance(nested, dict) else {}


def _details(error: dict[str, Any]) -> list[dict[str, Any]]:
    details = error.get("details")
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _daily_quota_spent(error: dict[str, Any]) -> bool:
    """Whether a QuotaFailure names only per-day quotas (quotaId "GenerateRequestsPerDayPerProjectPerModel...")."""
    ids = [str(v.get("quotaId", "")) for d in _details(error) if d.get("@type") == _QUOTA_FAILURE
           for v in (d.get("violations") or []) if isinstance(v, dict)]
    return bool(ids) and all("PerDay" in quota_id for quota_id in ids)


def _reasons(error: dict[str, Any]) -> list[str]:
    """The ErrorInfo reasons (API_KEY_INVALID, SERVICE_DISABLED, ...): codes, never free text."""
    return [_code(d.get("reason")) for d in _details(error) if d.get("@type") == _ERROR_INFO]


def _is_key_problem(error: dict[str, Any]) -> bool:
    return any(reason.startswith("API_KEY") for reason in _reasons(error))


def _field(error: dict[str, Any], name: str) -> str:
    return _code(error.get(name))


def _code(value: Any) -> str:
    """An UPPER_SNAKE enum name, with anything else (which could be a key) removed."""
    return re.sub(r"[^A-Z_]", "", str(value or ""))[:64]
