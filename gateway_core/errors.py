"""The core's one error vocabulary, and how it travels as a gRPC status.

Every failure the core reports is a GatewayError: a stable UPPER_SNAKE reason,
a gRPC status code, a client-safe message, and optional details (the request
parameter at fault, a retry delay). It travels as a google.rpc.Status whose
details hold one google.rpc.ErrorInfo (domain "tollgate"), so the facade and
gRPC clients can map it without parsing messages. Anything else that escapes a
handler becomes INTERNAL with a generic message.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "tollgate"


class Reason(enum.StrEnum):
    """Why a call failed; the facade's HTTP table is keyed by these."""

    INVALID_API_KEY = "INVALID_API_KEY"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INVALID_REQUEST = "INVALID_REQUEST"
    UNSUPPORTED_PARAMETER = "UNSUPPORTED_PARAMETER"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    RATE_LIMITED = "RATE_LIMITED"
    LIMITS_UNAVAILABLE = "LIMITS_UNAVAILABLE"
    REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UPSTREAM_RATE_LIMITED = "UPSTREAM_RATE_LIMITED"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    INTERNAL = "INTERNAL"


_CODES: Mapping[Reason, grpc.StatusCode] = {
    Reason.INVALID_API_KEY: grpc.StatusCode.UNAUTHENTICATED,
    Reason.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.UNSUPPORTED_PARAMETER: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.MODEL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Reason.INSUFFICIENT_BALANCE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.LIMITS_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.REQUEST_TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.UPSTREAM_ERROR: grpc.StatusCode.UNAVAILABLE,
    Reason.UPSTREAM_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.UPSTREAM_RATE_LIMITED: grpc.StatusCode.UNAVAILABLE,
    Reason.UPSTREAM_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Reason.INTERNAL: grpc.StatusCode.INTERNAL,
}


class GatewayError(Exception):
    """A failure with a client-safe message. Never put secrets or upstream text in it."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        param: str | None = None,
        retry_after_seconds: float | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.param = param
        self.retry_after_seconds = retry_after_seconds
        # Client-safe HTTP headers for the facade (x-ratelimit-*), carried in ErrorInfo metadata.
        self.headers = tuple(headers)

    @property
    def code(self) -> grpc.StatusCode:
        return _CODES[self.reason]

    def to_status(self) -> grpc.Status:
        """The rich gRPC status (code, message, ErrorInfo in trailing metadata)."""
        metadata: dict[str, str] = {}
        if self.param is not None:
            metadata["param"] = self.param
        if self.retry_after_seconds is not None:
            metadata["retry_after_seconds"] = f"{self.retry_after_seconds:g}"
        metadata.update(self.headers)
        info = error_details_pb2.ErrorInfo(
            reason=self.reason.value, domain=ERROR_DOMAIN, metadata=metadata
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(
            code=self.code.value[0], message=self.message, details=[detail]
        )
        return rpc_status.to_status(status)

    def __repr__(self) -> str:
        return f"GatewayError({self.reason.value}, {self.message!r}, param={self.param!r})"


def invalid_request(message: str, param: str | None = None) -> GatewayError:
    """A 400-class error about the caller's request."""
    return GatewayError(Reason.INVALID_REQUEST, message, param=param)


async def abort(context: grpc.aio.ServicerContext, error: GatewayError) -> None:
    """Ends the call with error's rich status. Raises, like context.abort."""
    status = error.to_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


def error_info(call_error: grpc.aio.AioRpcError | grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo a Tollgate server attached to a failed call, if any."""
    status = rpc_status.from_call(call_error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None
