"""OpenAI's legacy billing endpoints, which OpenAI-compatible chat clients call to show a balance.

All arithmetic stays in integer micro-USD in the core; converting to dollars
and cents here is presentation only, at the very edge, because that is the
unit these endpoints speak.
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import orjson
from fastapi import APIRouter, Request
from google.protobuf import timestamp_pb2
from starlette.responses import Response

from gateway_core.pb.gateway.v1 import metering_pb2
from http_facade.errors import from_rpc_error, invalid_request
from http_facade.middleware import request_id_of
from http_facade.routes import Facade, call_metadata

router = APIRouter()
_MICROS_PER_USD = 1_000_000
_MICROS_PER_CENT = 10_000


@router.get("/v1/dashboard/billing/subscription")
async def billing_subscription(request: Request) -> Response:
    """The credit limit as clients compute it: what is left plus what was spent."""
    facade: Facade = request.state.facade
    metadata = call_metadata(request, request_id_of(request.scope))
    try:
        balance = await facade.metering.GetBalance(
            metering_pb2.GetBalanceRequest(), metadata=metadata, timeout=facade.call_timeout_seconds
        )
        summary = await facade.metering.SummarizeUsage(
            metering_pb2.SummarizeUsageRequest(), metadata=metadata, timeout=facade.call_timeout_seconds
        )
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None
    limit_usd = (balance.available_micros + _spent_micros(summary)) / _MICROS_PER_USD
    body = {
        "object": "billing_subscription",
        "has_payment_method": True,
        "soft_limit_usd": limit_usd,
        "hard_limit_usd": limit_usd,
        "system_hard_limit_usd": limit_usd,
        "access_until": 0,
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/v1/dashboard/billing/usage")
async def billing_usage(request: Request, start_date: str | None = None, end_date: str | None = None) -> Response:
    """Spend in cents over [start_date, end_date) (YYYY-MM-DD, UTC), all time when absent."""
    facade: Facade = request.state.facade
    query = metering_pb2.SummarizeUsageRequest()
    if start_date is not None:
        query.start_time.CopyFrom(_parse_date(start_date, "start_date"))
    if end_date is not None:
        query.end_time.CopyFrom(_parse_date(end_date, "end_date"))
    try:
        summary = await facade.metering.SummarizeUsage(
            query, metadata=call_metadata(request, request_id_of(request.scope)), timeout=facade.call_timeout_seconds
        )
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None
    body = {"object": "list", "daily_costs": [], "total_usage": _spent_micros(summary) / _MICROS_PER_CENT}
    return Response(orjson.dumps(body), media_type="application/json")


def _spent_micros(summary: metering_pb2.SummarizeUsageResponse) -> int:
    return sum(item.cost_micros for item in summary.summaries)


def _parse_date(text: str, param: str) -> timestamp_pb2.Timestamp:
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise invalid_request(f"'{param}' must be a date like 2026-01-31", param) from None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(day)
    return stamp
