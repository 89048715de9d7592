"""AdminService: accounts, API keys and top-ups over gRPC, for operators only.

Each RPC checks the admin token, then adapts the request to one Store call and
the result back to protos. Validation lives in the store; every failure leaves
as a GatewayError status (reason in ErrorInfo).
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf import message, timestamp_pb2

from gateway_core.auth import Metadata, bearer_token
from gateway_core.config import ModelSettings
from gateway_core.errors import GatewayError, Reason, abort, invalid_request
from gateway_core.pb.gateway.admin.v1 import admin_pb2 as pb
from gateway_core.pb.gateway.admin.v1 import admin_pb2_grpc
from gateway_core.store import AccountRecord, ApiKeyRecord, LedgerEntryRecord, LedgerKind, Store
from gateway_core.store.accounts import AccountLimitsUpdate
from gateway_core.store.holds import budget_period

_log = logging.getLogger(__name__)

INVALID_ADMIN_TOKEN = "invalid admin token"
ADMIN_DISABLED = (
    "the admin API is disabled until an admin token is configured "
    "([admin] token in the config file, or TOLLGATE_ADMIN_TOKEN)"
)

_KINDS = {
    LedgerKind.TOP_UP: pb.LEDGER_ENTRY_KIND_TOP_UP,
    LedgerKind.HOLD: pb.LEDGER_ENTRY_KIND_HOLD,
    LedgerKind.SETTLE: pb.LEDGER_ENTRY_KIND_SETTLE,
    LedgerKind.RELEASE: pb.LEDGER_ENTRY_KIND_RELEASE,
    LedgerKind.REFUND: pb.LEDGER_ENTRY_KIND_REFUND,
    LedgerKind.ADJUSTMENT: pb.LEDGER_ENTRY_KIND_ADJUSTMENT,
}
_STATES = {"active": pb.API_KEY_STATE_ACTIVE, "revoked": pb.API_KEY_STATE_REVOKED, "expired": pb.API_KEY_STATE_EXPIRED}


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp from an aware datetime."""
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value)
    return result


def from_timestamp(value: timestamp_pb2.Timestamp, param: str) -> datetime:
    """An aware UTC datetime from a request Timestamp; INVALID_REQUEST if out of range."""
    try:
        result: datetime = value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise invalid_request(f"{param} is not a valid time", param=param) from None
    return result


def account_to_pb(account: AccountRecord) -> pb.Account:
    """The wire form of an account."""
    return pb.Account(
        id=account.id,
        display_name=account.display_name,
        balance_micros=account.balance_micros,
        held_micros=account.held_micros,
        create_time=timestamp(account.created_at),
        rpm_limit=account.rpm_limit,
        tpm_limit=account.tpm_limit,
        concurrency_limit=account.concurrency_limit,
        monthly_budget_micros=account.monthly_budget_micros,
        budget_spent_micros=account.budget_spent_in(budget_period(datetime.now(UTC))),
        budget_held_micros=account.budget_held_micros,
        allowed_models=account.allowed_models,
    )


def api_key_to_pb(key: ApiKeyRecord, now: datetime) -> pb.ApiKey:
    """The wire form of a key (never its secret), with its state at `now`."""
    result = pb.ApiKey(
        id=key.id,
        account_id=key.account_id,
        display_name=key.display_name,
        allowed_models=key.allowed_models,
        rpm_limit=key.rpm_limit,
        tpm_limit=key.tpm_limit,
        spend_limit_micros=key.spend_limit_micros,
        state=_STATES[key.state(now)],
        redacted_secret=key.redacted,
        create_time=timestamp(key.created_at),
        concurrency_limit=key.concurrency_limit,
    )
    if key.expire_time is not None:
        result.expire_time.CopyFrom(timestamp(key.expire_time))
    if key.revoked_at is not None:
        result.revoke_time.CopyFrom(timestamp(key.revoked_at))
    return result


def entry_to_pb(entry: LedgerEntryRecord) -> pb.LedgerEntry:
    """The wire form of a ledger entry."""
    return pb.LedgerEntry(
        id=entry.id,
        account_id=entry.account_id,
        kind=_KINDS[entry.kind],
        amount_micros=entry.amount_micros,
        balance_after_micros=entry.balance_after_micros,
        request_id=entry.request_id or "",
        note=entry.note,
        create_time=timestamp(entry.created_at),
    )


Req = TypeVar("Req", bound=message.Message)
Resp = TypeVar("Resp", bound=message.Message)
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[["AdminServicer", Req, Context], Awaitable[Resp]]


def _admin_rpc(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Wraps an RPC: admin token first, then GatewayError (or a surprise) to a status."""

    @functools.wraps(handler)
    async def wrapper(self: AdminServicer, request: Req, context: Context) -> Resp:
        try:
            self.check_admin(context.invocation_metadata())
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except GatewayError as err:
            await abort(context, err)
        except Exception:
            _log.exception("AdminService.%s failed", handler.__name__)
            await abort(context, GatewayError(Reason.INTERNAL, "internal error"))
        raise AssertionError("abort() returned")

    return wrapper


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """gateway.admin.v1.AdminService over a Store; needs `authorization: Bearer <admin token>`."""

    def __init__(
        self,
        store: Store,
        admin_token: str,
        key_pepper: str,
        *,
        models: Mapping[str, ModelSettings] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._models = dict(models or {})
        self._token = admin_token.encode("utf-8")
        self._pepper = key_pepper
        self._now = now

    def check_admin(self, metadata: Metadata | None) -> None:
        """Raises UNAUTHENTICATED unless the call carries the configured admin token."""
        if not self._token:
            raise GatewayError(Reason.INVALID_API_KEY, ADMIN_DISABLED)
        token = bearer_token(metadata)
        if token is None or not hmac.compare_digest(token.encode("utf-8"), self._token):
            raise GatewayError(Reason.INVALID_API_KEY, INVALID_ADMIN_TOKEN)

    @_admin_rpc
    async def CreateAccount(self, request: pb.CreateAccountRequest, context: Context) -> pb.CreateAccountResponse:
        limits = AccountLimitsUpdate(
            rpm_limit=request.rpm_limit,
            tpm_limit=request.tpm_limit,
            concurrency_limit=request.concurrency_limit,
            monthly_budget_micros=request.monthly_budget_micros,
            allowed_models=tuple(request.allowed_models),
        )
        account = await self._store.create_account(request.display_name, limits=limits)
        return pb.CreateAccountResponse(account=account_to_pb(account))

    @_admin_rpc
    async def GetAccount(self, request: pb.GetAccountRequest, context: Context) -> pb.GetAccountResponse:
        account = await self._store.get_account(request.account_id)
        return pb.GetAccountResponse(account=account_to_pb(account))

    @_admin_rpc
    async def ListAccounts(self, request: pb.ListAccountsRequest, context: Context) -> pb.ListAccountsResponse:
        page, token = await self._store.list_accounts(request.page_size, request.page_token)
        return pb.ListAccountsResponse(accounts=[account_to_pb(a) for a in page], next_page_token=token)

    @_admin_rpc
    async def UpdateAccount(self, request: pb.UpdateAccountRequest, context: Context) -> pb.UpdateAccountResponse:
        def optional(field: str) -> int | None:
            return getattr(request, field) if request.HasField(field) else None

        name = request.display_name if request.HasField("display_name") else None
        limits = AccountLimitsUpdate(
            rpm_limit=optional("rpm_limit"),
            tpm_limit=optional("tpm_limit"),
            concurrency_limit=optional("concurrency_limit"),
            monthly_budget_micros=optional("monthly_budget_micros"),
            allowed_models=tuple(request.allowed_models.models) if request.HasField("allowed_models") else None,
        )
        account = await self._store.update_account(request.account_id, display_name=name, limits=limits)
        return pb.UpdateAccountResponse(account=account_to_pb(account))

    @_admin_rpc
    async def TopUpAccount(self, request: pb.TopUpAccountRequest, context: Context) -> pb.TopUpAccountResponse:
        account, entry = await self._store.top_up(
            request.account_id, request.amount_micros, request.request_id, request.note
        )
        return pb.TopUpAccountResponse(account=account_to_pb(account), entry=entry_to_pb(entry))

    @_admin_rpc
    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: Context) -> pb.CreateApiKeyResponse:
        expire = from_timestamp(request.expire_time, "expire_time") if request.HasField("expire_time") else None
        key, secret = await self._store.create_api_key(
            request.account_id,
            pepper=self._pepper,
            display_name=request.display_name,
            allowed_models=list(request.allowed_models),
            rpm_limit=request.rpm_limit,
            tpm_limit=request.tpm_limit,
            spend_limit_micros=request.spend_limit_micros,
            expire_time=expire,
            concurrency_limit=request.concurrency_limit,
        )
        return pb.CreateApiKeyResponse(api_key=api_key_to_pb(key, self._now()), secret=secret)

    @_admin_rpc
    async def GetApiKey(self, request: pb.GetApiKeyRequest, context: Context) -> pb.GetApiKeyResponse:
        key = await self._store.get_api_key(request.api_key_id)
        return pb.GetApiKeyResponse(api_key=api_key_to_pb(key, self._now()))

    @_admin_rpc
    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: Context) -> pb.ListApiKeysResponse:
        page, token = await self._store.list_api_keys(request.account_id or None, request.page_size, request.page_token)
        now = self._now()
        return pb.ListApiKeysResponse(api_keys=[api_key_to_pb(k, now) for k in page], next_page_token=token)

    @_admin_rpc
    async def UpdateApiKey(self, request: pb.UpdateApiKeyRequest, context: Context) -> pb.UpdateApiKeyResponse:
        def optional(field: str) -> int | None:
            return getattr(request, field) if request.HasField(field) else None

        key = await self._store.update_api_key(
            request.api_key_id,
            display_name=request.display_name if request.HasField("display_name") else None,
            allowed_models=list(request.allowed_models.models) if request.HasField("allowed_models") else None,
            rpm_limit=optional("rpm_limit"),
            tpm_limit=optional("tpm_limit"),
            spend_limit_micros=optional("spend_limit_micros"),
            expire_time=(
                from_timestamp(request.expire_time, "expire_time") if request.HasField("expire_time") else None
            ),
            clear_expire_time=request.clear_expire_time,
            concurrency_limit=optional("concurrency_limit"),
        )
        return pb.UpdateApiKeyResponse(api_key=api_key_to_pb(key, self._now()))

    @_admin_rpc
    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: Context) -> pb.RevokeApiKeyResponse:
        key = await self._store.revoke_api_key(request.api_key_id)
        return pb.RevokeApiKeyResponse(api_key=api_key_to_pb(key, self._now()))

    @_admin_rpc
    async def ListLedgerEntries(
        self, request: pb.ListLedgerEntriesRequest, context: Context
    ) -> pb.ListLedgerEntriesResponse:
        page, token = await self._store.list_ledger_entries(request.account_id, request.page_size, request.page_token)
        return pb.ListLedgerEntriesResponse(entries=[entry_to_pb(e) for e in page], next_page_token=token)

    @_admin_rpc
    async def SummarizeUsage(self, request: pb.SummarizeUsageRequest, context: Context) -> pb.SummarizeUsageResponse:
        start = from_timestamp(request.start_time, "start_time") if request.HasField("start_time") else None
        end = from_timestamp(request.end_time, "end_time") if request.HasField("end_time") else None
        if request.account_id:
            await self._store.get_account(request.account_id)  # an unknown account is NOT_FOUND, not empty
        totals = await self._store.summarize_daily_usage(request.account_id or None, start, end)
        return pb.SummarizeUsageResponse(usages=[pb.DailyModelUsage(**vars(t)) for t in totals])

    @_admin_rpc
    async def ListModelPrices(
        self, request: pb.ListModelPricesRequest, context: Context
    ) -> pb.ListModelPricesResponse:
        return pb.ListModelPricesResponse(models=[model_price_to_pb(self._models[n]) for n in sorted(self._models)])


def model_price_to_pb(model: ModelSettings) -> pb.ModelPrice:
    """The wire form of a configured model's prices and routes."""
    return pb.ModelPrice(
        model=model.name,
        input_price_micros=model.input_price_micros,
        output_price_micros=model.output_price_micros,
        cached_input_price_micros=model.cached_input_price_micros,
        max_output_tokens=model.max_output_tokens,
        routes=[pb.ModelRoute(provider=r.provider, upstream_model=r.model) for r in model.routes],
    )
