"""The facade's error table: every core Reason and gRPC fallback -> HTTP status and OpenAI error."""

from __future__ import annotations

import grpc
import orjson
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from gateway_core.errors import GatewayError, Reason
from http_facade.errors import CODES, REASONS, ApiError, error_info, from_rpc_error

GENERIC = "The server had an error while processing your request."

# Reason -> (HTTP status, OpenAI type, code): the public contract of DESIGN.md.
EXPECTED = {
    Reason.INVALID_API_KEY: (401, "invalid_request_error", "invalid_api_key"),
    Reason.PERMISSION_DENIED: (403, "permission_error", "permission_denied"),
    Reason.INVALID_REQUEST: (400, "invalid_request_error", None),
    Reason.UNSUPPORTED_PARAMETER: (400, "invalid_request_error", "unsupported_parameter"),
    Reason.MODEL_NOT_FOUND: (404, "invalid_request_error", "model_not_found"),
    Reason.NOT_FOUND: (404, "invalid_request_error", "not_found"),
    Reason.ALREADY_EXISTS: (409, "invalid_request_error", "already_exists"),
    Reason.INSUFFICIENT_BALANCE: (429, "insufficient_quota", "insufficient_quota"),
    Reason.RATE_LIMITED: (429, "requests", "rate_limit_exceeded"),
    Reason.LIMITS_UNAVAILABLE: (503, "server_error", "limits_unavailable"),
    Reason.REQUEST_TOO_LARGE: (413, "invalid_request_error", "request_too_large"),
    Reason.UPSTREAM_ERROR: (502, "server_error", "upstream_error"),
    Reason.UPSTREAM_UNAVAILABLE: (503, "server_error", "upstream_unavailable"),
    Reason.UPSTREAM_RATE_LIMITED: (503, "server_error", "upstream_rate_limited"),
    Reason.UPSTREAM_TIMEOUT: (504, "server_error", "timeout"),
    Reason.INTERNAL: (500, "server_error", None),
}


def rpc_error(error: GatewayError) -> grpc.aio.AioRpcError:
    """The error a facade stub call raises when the core aborts with error."""
    status = error.to_status()
    return grpc.aio.AioRpcError(
        status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata), status.details
    )


def plain_error(code: grpc.StatusCode, details: str = "boom: /srv/secret.py line 3") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_table_covers_every_reason_and_nothing_else() -> None:
    assert set(REASONS) == {reason.value for reason in Reason}
    assert set(EXPECTED) == set(Reason)


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_maps_to_its_http_error(reason: Reason) -> None:
    error = from_rpc_error(rpc_error(GatewayError(reason, "client-safe text")))
    assert (error.status, error.type, error.code) == EXPECTED[reason]
    body = orjson.loads(error.body())
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    # The core's message is client-safe by contract, except for INTERNAL, whose
    # text is replaced anyway as a second line of defence.
    assert error.message == (GENERIC if reason is Reason.INTERNAL else "client-safe text")


def test_invalid_request_carries_param() -> None:
    error = from_rpc_error(
        rpc_error(GatewayError(Reason.INVALID_REQUEST, "bad", param="messages[0].content"))
    )
    assert (error.status, error.param) == (400, "messages[0].content")
    unsupported = from_rpc_error(
        rpc_error(GatewayError(Reason.UNSUPPORTED_PARAMETER, "no", param="logprobs"))
    )
    assert (unsupported.code, unsupported.param) == ("unsupported_parameter", "logprobs")


def test_insufficient_balance_tells_the_sdk_not_to_retry() -> None:
    error = from_rpc_error(rpc_error(GatewayError(Reason.INSUFFICIENT_BALANCE, "top up")))
    assert error.headers == {"x-should-retry": "false"}
    response = error.to_response()
    assert response.status_code == 429
    assert response.headers["x-should-retry"] == "false"
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("reason", "seconds", "header"),
    [
        (Reason.RATE_LIMITED, 1.2, "2"),
        (Reason.RATE_LIMITED, 3, "3"),
        (Reason.RATE_LIMITED, 0.01, "1"),
        (Reason.UPSTREAM_RATE_LIMITED, 30, "30"),
        (Reason.UPSTREAM_UNAVAILABLE, 0.5, "1"),
    ],
)
def test_retry_after_rounds_up_to_whole_seconds(reason: Reason, seconds: float, header: str) -> None:
    error = from_rpc_error(rpc_error(GatewayError(reason, "slow down", retry_after_seconds=seconds)))
    assert error.headers["retry-after"] == header


def test_no_retry_after_when_unknown_or_not_a_retryable_status() -> None:
    assert "retry-after" not in from_rpc_error(rpc_error(GatewayError(Reason.RATE_LIMITED, "x"))).headers
    bad_request = GatewayError(Reason.INVALID_REQUEST, "x", retry_after_seconds=5)
    assert from_rpc_error(rpc_error(bad_request)).headers == {}


@pytest.mark.parametrize(
    ("code", "status", "type_", "error_code", "message"),
    [
        (grpc.StatusCode.CANCELLED, 499, "invalid_request_error", "cancelled", "The request was cancelled."),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "server_error", "timeout", "The request timed out."),
        (grpc.StatusCode.UNAVAILABLE, 503, "server_error", "service_unavailable", "gateway core unavailable"),
        (
            grpc.StatusCode.UNAUTHENTICATED,
            401,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided.",
        ),
        (grpc.StatusCode.INTERNAL, 500, "server_error", None, GENERIC),
        (grpc.StatusCode.UNKNOWN, 500, "server_error", None, GENERIC),
        (grpc.StatusCode.INVALID_ARGUMENT, 500, "server_error", None, GENERIC),
        (grpc.StatusCode.UNIMPLEMENTED, 500, "server_error", None, GENERIC),
    ],
)
def test_status_without_error_info_falls_back_on_the_code(
    code: grpc.StatusCode, status: int, type_: str, error_code: str | None, message: str
) -> None:
    error = from_rpc_error(plain_error(code))
    assert (error.status, error.type, error.code, error.message, error.param) == (
        status,
        type_,
        error_code,
        message,
        None,
    )
    assert "secret" not in error.body().decode()


def test_fallback_table_keys_are_status_codes() -> None:
    assert all(isinstance(code, grpc.StatusCode) for code in CODES)


def test_unknown_reason_is_a_generic_500_not_its_text() -> None:
    info = error_details_pb2.ErrorInfo(reason="SOMETHING_NEW", domain="tollgate")
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(
        code=grpc.StatusCode.FAILED_PRECONDITION.value[0], message="leak", details=[detail]
    )
    error = from_rpc_error(
        grpc.aio.AioRpcError(
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
            "leak",
        )
    )
    assert (error.status, error.message) == (500, GENERIC)


def test_error_info_survives_garbage_details() -> None:
    garbage = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", b"\xff\x00not a status")),
        "x",
    )
    assert error_info(garbage) is None
    assert from_rpc_error(garbage).status == 503


def test_error_info_reads_the_cores_detail() -> None:
    info = error_info(rpc_error(GatewayError(Reason.RATE_LIMITED, "x", param="p", retry_after_seconds=2)))
    assert info is not None
    assert (info.reason, dict(info.metadata)) == ("RATE_LIMITED", {"param": "p", "retry_after_seconds": "2"})


def test_api_error_body_has_all_four_keys_even_when_null() -> None:
    assert orjson.loads(ApiError(400, "m").body()) == {
        "error": {"message": "m", "type": "invalid_request_error", "param": None, "code": None}
    }
