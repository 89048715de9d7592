"""MeteringService: balance and usage of the calling key's own account.

Every RPC authenticates the key and then reads only that key's account: the
account id comes from the key, never from the request, so a key cannot see
another account's records.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeAlias

import grpc
from google.protobuf import timestamp_pb2

from gateway_core.auth import Authenticator
from gateway_core.errors import GatewayError, abort, invalid_request
from gateway_core.metering.outcome import UsageStatus
from gateway_core.pb.gateway.v1 import metering_pb2 as pb
from gateway_core.pb.gateway.v1 import metering_pb2_grpc
from gateway_core.store import Store, Usage

_STATUSES = {
    UsageStatus.OK: pb.USAGE_STATUS_OK,
    UsageStatus.CANCELLED: pb.USAGE_STATUS_CANCELLED,
    UsageStatus.UPSTREAM_ERROR: pb.USAGE_STATUS_UPSTREAM_ERROR,
    UsageStatus.ABANDONED: pb.USAGE_STATUS_ABANDONED,
}
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class MeteringServicer(metering_pb2_grpc.MeteringServiceServicer):
    """gateway.v1.MeteringService for user keys (`authorization: Bearer sk-tg-...`)."""

    def __init__(self, store: Store, authenticator: Authenticator) -> None:
        self._store = store
        self._auth = authenticator

    async def GetBalance(self, request: pb.GetBalanceRequest, context: Context) -> pb.GetBalanceResponse:
        try:
            principal = await self._auth.authenticate(context.invocation_metadata())
            account = await self._store.get_account(principal.account_id)
        except GatewayError as err:
            await abort(context, err)
            raise
        return pb.GetBalanceResponse(
            account_id=account.id,
            balance_micros=account.balance_micros,
            held_micros=account.held_micros,
            available_micros=account.available_micros,
        )

    async def ListUsageRecords(
        self, request: pb.ListUsageRecordsRequest, context: Context
    ) -> pb.ListUsageRecordsResponse:
        try:
            principal = await self._auth.authenticate(context.invocation_metadata())
            records, token = await self._store.list_usage_records(
                principal.account_id,
                page_size=request.page_size,
                page_token=request.page_token,
                start_time=_optional_time(request, "start_time"),
                end_time=_optional_time(request, "end_time"),
            )
        except GatewayError as err:
            await abort(context, err)
            raise
        return pb.ListUsageRecordsResponse(usage_records=[usage_to_pb(r) for r in records], next_page_token=token)

    async def SummarizeUsage(self, request: pb.SummarizeUsageRequest, context: Context) -> pb.SummarizeUsageResponse:
        try:
            principal = await self._auth.authenticate(context.invocation_metadata())
            totals = await self._store.summarize_usage(
                principal.account_id,
                start_time=_optional_time(request, "start_time"),
                end_time=_optional_time(request, "end_time"),
            )
        except GatewayError as err:
            await abort(context, err)
            raise
        return pb.SummarizeUsageResponse(
            summaries=[
                pb.ModelUsageSummary(
                    model=t.model,
                    request_count=t.request_count,
                    prompt_tokens=t.prompt_tokens,
                    completion_tokens=t.completion_tokens,
                    cost_micros=t.cost_micros,
                )
                for t in totals
            ]
        )


def usage_to_pb(record: Usage) -> pb.UsageRecord:
    """The wire form of a usage record."""
    create_time = timestamp_pb2.Timestamp()
    create_time.FromDatetime(record.created_at)
    return pb.UsageRecord(
        request_id=record.request_id,
        account_id=record.account_id,
        api_key_id=record.api_key_id,
        model=record.model,
        provider=record.provider,
        upstream_model=record.upstream_model,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        cached_tokens=record.cached_tokens,
        reasoning_tokens=record.reasoning_tokens,
        cost_micros=record.cost_micros,
        status=_STATUSES[record.status],
        latency_ms=record.latency_ms,
        time_to_first_token_ms=record.time_to_first_token_ms or 0,
        estimated=record.estimated,
        create_time=create_time,
        clamped=record.clamped,
        held_micros=record.held_micros,
    )


def _optional_time(request: pb.ListUsageRecordsRequest | pb.SummarizeUsageRequest, field: str) -> datetime | None:
    """The request's Timestamp field as an aware UTC datetime, None when unset."""
    if not request.HasField(field):
        return None
    value: timestamp_pb2.Timestamp = getattr(request, field)
    try:
        result: datetime = value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise invalid_request(f"{field} is not a valid time", param=field) from None
    return result
