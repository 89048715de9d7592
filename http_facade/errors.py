"""OpenAI-shaped HTTP errors, and the one table that maps core failures onto them.

The core reports every failure as a gRPC status carrying a google.rpc.ErrorInfo
whose `reason` is one of gateway_core.errors.Reason. REASONS below turns that
reason into an HTTP status and OpenAI's error `type`/`code`; CODES is the
fallback for statuses without an ErrorInfo (the core unreachable, a deadline,
a cancelled call). Nothing else in the facade decides an error's status.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
import orjson
from google.rpc import error_details_pb2, status_pb2
from starlette.responses import Response

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
RATE_LIMIT_PREFIX = "x-ratelimit-"
_GENERIC_SERVER_MESSAGE = "The server had an error while processing your request."


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """How one kind of failure looks over HTTP.

    `message` replaces the core's message when set: used wherever the text could
    come from somewhere other than a client-safe GatewayError.
    """

    status: int
    type: str
    code: str | None = None
    message: str | None = None
    should_retry: bool | None = None


# Keyed by gateway_core.errors.Reason values (strings, so the facade does not
# import the core). A test walks every Reason to keep this table complete.
REASONS: Mapping[str, ErrorKind] = {
    "INVALID_API_KEY": ErrorKind(401, "invalid_request_error", "invalid_api_key"),
    "PERMISSION_DENIED": ErrorKind(403, "permission_error", "permission_denied"),
    "INVALID_REQUEST": ErrorKind(400, "invalid_request_error"),
    "UNSUPPORTED_PARAMETER": ErrorKind(400, "invalid_request_error", "unsupported_parameter"),
    "MODEL_NOT_FOUND": ErrorKind(404, "invalid_request_error", "model_not_found"),
    "NOT_FOUND": ErrorKind(404, "invalid_request_error", "not_found"),
    "ALREADY_EXISTS": ErrorKind(409, "invalid_request_error", "already_exists"),
    # Retrying cannot help until someone tops the account up; tell the SDK so.
    "INSUFFICIENT_BALANCE": ErrorKind(429, "insufficient_quota", "insufficient_quota", should_retry=False),
    "RATE_LIMITED": ErrorKind(429, "requests", "rate_limit_exceeded"),
    "LIMITS_UNAVAILABLE": ErrorKind(503, "server_error", "limits_unavailable"),
    "REQUEST_TOO_LARGE": ErrorKind(413, "invalid_request_error", "request_too_large"),
    "UPSTREAM_ERROR": ErrorKind(502, "server_error", "upstream_error"),
    "UPSTREAM_UNAVAILABLE": ErrorKind(503, "server_error", "upstream_unavailable"),
    "UPSTREAM_RATE_LIMITED": ErrorKind(503, "server_error", "upstream_rate_limited"),
    "UPSTREAM_TIMEOUT": ErrorKind(504, "server_error", "timeout"),
    "INTERNAL": ErrorKind(500, "server_error", None, _GENERIC_SERVER_MESSAGE),
}

# Statuses without an ErrorInfo did not come from a GatewayError, so their text
# is never shown: each has a fixed message.
CODES: Mapping[grpc.StatusCode, ErrorKind] = {
    grpc.StatusCode.CANCELLED: ErrorKind(
        499, "invalid_request_error", "cancelled", "The request was cancelled."
    ),
    grpc.StatusCode.DEADLINE_EXCEEDED: ErrorKind(504, "server_error", "timeout", "The request timed out."),
    grpc.StatusCode.UNAVAILABLE: ErrorKind(
        503, "server_error", "service_unavailable", "gateway core unavailable"
    ),
    grpc.StatusCode.UNAUTHENTICATED: ErrorKind(
        401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided."
    ),
}

_FALLBACK = ErrorKind(500, "server_error", None, _GENERIC_SERVER_MESSAGE)


class ApiError(Exception):
    """An error response in OpenAI's shape: `{"error": {message, type, param, code}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> bytes:
        """The JSON body, also used as the in-band `data:` of a failed stream."""
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )

    def to_response(self) -> Response:
        """The complete HTTP response for this error."""
        return Response(
            self.body(),
            status_code=self.status,
            headers=self.headers,
            media_type="application/json",
        )

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.message!r}, code={self.code!r}, param={self.param!r})"


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 about the client's request body."""
    return ApiError(400, message, param=param, code=code)


def from_rpc_error(error: grpc.RpcError) -> ApiError:
    """Maps a failed core call to the HTTP error the client sees."""
    code = _status_code(error)
    info = error_info(error)
    kind = REASONS.get(info.reason) if info is not None else None
    if kind is None:
        kind = CODES.get(code, _FALLBACK)
    metadata: Mapping[str, str] = info.metadata if info is not None else {}
    message = kind.message or _details(error) or _GENERIC_SERVER_MESSAGE
    headers: dict[str, str] = {}
    retry_after = _retry_after(metadata.get("retry_after_seconds"))
    if retry_after is not None and kind.status in (429, 503):
        headers["retry-after"] = retry_after
    if kind.should_retry is False:
        headers["x-should-retry"] = "false"
    headers.update(rate_limit_headers(metadata.items()))
    return ApiError(
        kind.status,
        message,
        type=kind.type,
        param=metadata.get("param") or None,
        code=kind.code,
        headers=headers,
    )


def rate_limit_headers(pairs: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """The core's x-ratelimit-* values, from gRPC metadata or ErrorInfo, as HTTP headers."""
    return {
        key: value
        for key, value in pairs
        if key.startswith(RATE_LIMIT_PREFIX) and isinstance(value, str) and value.isascii() and value.isprintable()
    }


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo the core attached to a failed call, if any.

    Reads grpc-status-details-bin directly (instead of rpc_status.from_call) so a
    malformed or mismatched detail degrades to "no ErrorInfo" rather than raising.
    """
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # a corrupt detail is as good as none
            return None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info
    return None


def _status_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(error, "code", None)
    return code() if callable(code) else None


def _details(error: grpc.RpcError) -> str | None:
    details = getattr(error, "details", None)
    return details() if callable(details) else None


def _retry_after(seconds: str | None) -> str | None:
    """Whole seconds, rounded up, as Retry-After wants; None if absent or unreadable."""
    if not seconds:
        return None
    try:
        value = float(seconds)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return str(math.ceil(value))
