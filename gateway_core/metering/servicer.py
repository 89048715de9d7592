"""MeteringService: balance (and later usage) of the calling key's own account."""

from __future__ import annotations

from typing import Any

import grpc

from gateway_core.auth import Authenticator
from gateway_core.errors import GatewayError, abort
from gateway_core.pb.gateway.v1 import metering_pb2 as pb
from gateway_core.pb.gateway.v1 import metering_pb2_grpc
from gateway_core.store import Store


class MeteringServicer(metering_pb2_grpc.MeteringServiceServicer):
    """gateway.v1.MeteringService for user keys (`authorization: Bearer sk-tg-...`).

    ListUsageRecords and SummarizeUsage are not implemented yet (UNIMPLEMENTED):
    they arrive with usage records.
    """

    def __init__(self, store: Store, authenticator: Authenticator) -> None:
        self._store = store
        self._auth = authenticator

    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetBalanceResponse:
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
