"""AdminService and MeteringService.GetBalance over a real grpc.aio server on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from gateway_core.errors import error_info
from gateway_core.pb.gateway.admin.v1 import admin_pb2 as pb
from gateway_core.pb.gateway.admin.v1 import admin_pb2_grpc
from gateway_core.pb.gateway.v1 import metering_pb2, metering_pb2_grpc
from tests.store_support import ADMIN_TOKEN, RunningServer, admin_metadata, running_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path) as running:
        yield running


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.address) as chan:
        yield chan


@pytest.fixture
def admin(channel: grpc.aio.Channel) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(channel)


MD = admin_metadata()


async def expect_status(call: object, code: grpc.StatusCode, reason: str, param: str | None = None) -> str:
    """Awaits a failing call; checks its code, ErrorInfo reason and param; returns its message."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call  # type: ignore[misc]
    assert exc.value.code() == code
    info = error_info(exc.value)
    assert info is not None and info.reason == reason and info.domain == "tollgate"
    if param is not None:
        assert info.metadata["param"] == param
    return exc.value.details() or ""


async def new_account(admin: admin_pb2_grpc.AdminServiceStub, name: str = "Research") -> pb.Account:
    reply = await admin.CreateAccount(pb.CreateAccountRequest(display_name=name), metadata=MD)
    return reply.account


async def test_account_rpcs(admin: admin_pb2_grpc.AdminServiceStub) -> None:
    account = await new_account(admin)
    assert account.id.startswith("acct_") and account.balance_micros == 0 and account.create_time.seconds > 0
    got = await admin.GetAccount(pb.GetAccountRequest(account_id=account.id), metadata=MD)
    assert got.account == account
    updated = await admin.UpdateAccount(pb.UpdateAccountRequest(account_id=account.id, display_name="Lab"), metadata=MD)
    assert updated.account.display_name == "Lab"
    unchanged = await admin.UpdateAccount(pb.UpdateAccountRequest(account_id=account.id), metadata=MD)
    assert unchanged.account.display_name == "Lab"
    second = await new_account(admin, "Second")
    page = await admin.ListAccounts(pb.ListAccountsRequest(page_size=1), metadata=MD)
    assert [a.id for a in page.accounts] == [account.id] and page.next_page_token
    rest = await admin.ListAccounts(pb.ListAccountsRequest(page_token=page.next_page_token), metadata=MD)
    assert [a.id for a in rest.accounts] == [second.id] and rest.next_page_token == ""


async def test_account_errors(admin: admin_pb2_grpc.AdminServiceStub) -> None:
    not_found, invalid = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT
    await expect_status(
        admin.GetAccount(pb.GetAccountRequest(account_id="acct_x"), metadata=MD), not_found, "NOT_FOUND", "account_id"
    )
    await expect_status(
        admin.CreateAccount(pb.CreateAccountRequest(), metadata=MD), invalid, "INVALID_REQUEST", "display_name"
    )
    await expect_status(
        admin.ListAccounts(pb.ListAccountsRequest(page_size=-1), metadata=MD), invalid, "INVALID_REQUEST", "page_size"
    )
    await expect_status(
        admin.ListAccounts(pb.ListAccountsRequest(page_token="junk"), metadata=MD),
        invalid,
        "INVALID_REQUEST",
        "page_token",
    )


async def test_top_up_is_idempotent_and_ledgered(admin: admin_pb2_grpc.AdminServiceStub) -> None:
    account = await new_account(admin)
    request = pb.TopUpAccountRequest(account_id=account.id, amount_micros=2_000_000, request_id="inv-7", note="n")
    first = await admin.TopUpAccount(request, metadata=MD)
    again = await admin.TopUpAccount(request, metadata=MD)
    assert first.account.balance_micros == again.account.balance_micros == 2_000_000
    assert again.entry == first.entry
    assert first.entry.kind == pb.LEDGER_ENTRY_KIND_TOP_UP and first.entry.balance_after_micros == 2_000_000
    await admin.TopUpAccount(
        pb.TopUpAccountRequest(account_id=account.id, amount_micros=5, request_id="b"), metadata=MD
    )
    ledger = await admin.ListLedgerEntries(pb.ListLedgerEntriesRequest(account_id=account.id), metadata=MD)
    assert [e.request_id for e in ledger.entries] == ["b", "inv-7"]
    assert sum(e.amount_micros for e in ledger.entries) == 2_000_005
    changed = pb.TopUpAccountRequest(account_id=account.id, amount_micros=1, request_id="inv-7")
    await expect_status(
        admin.TopUpAccount(changed, metadata=MD), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "request_id"
    )
    zero = pb.TopUpAccountRequest(account_id=account.id, amount_micros=0, request_id="z")
    await expect_status(
        admin.TopUpAccount(zero, metadata=MD), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "amount_micros"
    )
    missing = pb.TopUpAccountRequest(account_id="acct_x", amount_micros=1, request_id="m")
    await expect_status(admin.TopUpAccount(missing, metadata=MD), grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    await expect_status(
        admin.ListLedgerEntries(pb.ListLedgerEntriesRequest(account_id="acct_x"), metadata=MD),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )


async def test_api_key_rpcs(admin: admin_pb2_grpc.AdminServiceStub) -> None:
    account = await new_account(admin)
    request = pb.CreateApiKeyRequest(
        account_id=account.id,
        display_name="laptop",
        allowed_models=["m1"],
        rpm_limit=60,
        tpm_limit=10_000,
        spend_limit_micros=3_000_000,
    )
    request.expire_time.FromDatetime(datetime.now(UTC) + timedelta(days=7))
    created = await admin.CreateApiKey(request, metadata=MD)
    key = created.api_key
    assert created.secret.startswith(f"sk-tg-{key.id}_")
    assert key.state == pb.API_KEY_STATE_ACTIVE and list(key.allowed_models) == ["m1"]
    assert key.redacted_secret.endswith(created.secret[-4:]) and created.secret not in str(key)
    assert not key.HasField("revoke_time") and key.HasField("expire_time")
    got = await admin.GetApiKey(pb.GetApiKeyRequest(api_key_id=key.id), metadata=MD)
    assert got.api_key == key
    update = pb.UpdateApiKeyRequest(
        api_key_id=key.id, rpm_limit=0, clear_expire_time=True, allowed_models=pb.ModelList(models=[])
    )
    updated = (await admin.UpdateApiKey(update, metadata=MD)).api_key
    assert (updated.rpm_limit, list(updated.allowed_models), updated.HasField("expire_time")) == (0, [], False)
    assert updated.tpm_limit == 10_000 and updated.display_name == "laptop"
    listed = await admin.ListApiKeys(pb.ListApiKeysRequest(account_id=account.id), metadata=MD)
    assert [k.id for k in listed.api_keys] == [key.id]
    revoked = (await admin.RevokeApiKey(pb.RevokeApiKeyRequest(api_key_id=key.id), metadata=MD)).api_key
    assert revoked.state == pb.API_KEY_STATE_REVOKED and revoked.HasField("revoke_time")
    again = (await admin.RevokeApiKey(pb.RevokeApiKeyRequest(api_key_id=key.id), metadata=MD)).api_key
    assert again.revoke_time == revoked.revoke_time


async def test_api_key_errors(admin: admin_pb2_grpc.AdminServiceStub) -> None:
    account = await new_account(admin)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    past = pb.CreateApiKeyRequest(account_id=account.id)
    past.expire_time.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    cases = [
        (pb.CreateApiKeyRequest(account_id=account.id, rpm_limit=-1), "rpm_limit"),
        (pb.CreateApiKeyRequest(account_id=account.id, spend_limit_micros=-1), "spend_limit_micros"),
        (pb.CreateApiKeyRequest(account_id=account.id, allowed_models=[""]), "allowed_models"),
        (past, "expire_time"),
    ]
    for request, param in cases:
        await expect_status(admin.CreateApiKey(request, metadata=MD), invalid, "INVALID_REQUEST", param)
    await expect_status(
        admin.CreateApiKey(pb.CreateApiKeyRequest(account_id="acct_x"), metadata=MD),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        "account_id",
    )
    for call in (
        admin.GetApiKey(pb.GetApiKeyRequest(api_key_id="nope"), metadata=MD),
        admin.RevokeApiKey(pb.RevokeApiKeyRequest(api_key_id="nope"), metadata=MD),
        admin.UpdateApiKey(pb.UpdateApiKeyRequest(api_key_id="nope"), metadata=MD),
    ):
        await expect_status(call, grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "api_key_id")


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong-token"),),
        (("authorization", ADMIN_TOKEN),),
        (("authorization", f"Basic {ADMIN_TOKEN}"),),
    ],
)
async def test_bad_or_missing_admin_token_is_unauthenticated(
    admin: admin_pb2_grpc.AdminServiceStub, metadata: tuple[tuple[str, str], ...]
) -> None:
    message = await expect_status(
        admin.ListAccounts(pb.ListAccountsRequest(), metadata=metadata),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_API_KEY",
    )
    assert message == "invalid admin token"


async def test_a_user_key_never_authorizes_admin_calls(admin: admin_pb2_grpc.AdminServiceStub) -> None:
    account = await new_account(admin)
    secret = (await admin.CreateApiKey(pb.CreateApiKeyRequest(account_id=account.id), metadata=MD)).secret
    message = await expect_status(
        admin.GetAccount(pb.GetAccountRequest(account_id=account.id), metadata=admin_metadata(secret)),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_API_KEY",
    )
    assert message == "invalid admin token"


async def test_admin_token_is_accepted_case_insensitively_as_bearer(admin: admin_pb2_grpc.AdminServiceStub) -> None:
    reply = await admin.ListAccounts(pb.ListAccountsRequest(), metadata=(("authorization", f"bearer {ADMIN_TOKEN}"),))
    assert list(reply.accounts) == []


async def test_empty_admin_token_disables_the_admin_api(tmp_path: Path) -> None:
    async with running_server(tmp_path, admin_token="") as server, grpc.aio.insecure_channel(server.address) as chan:
        stub = admin_pb2_grpc.AdminServiceStub(chan)
        for metadata in [(), admin_metadata(""), admin_metadata("anything")]:
            message = await expect_status(
                stub.ListAccounts(pb.ListAccountsRequest(), metadata=metadata),
                grpc.StatusCode.UNAUTHENTICATED,
                "INVALID_API_KEY",
            )
            assert "disabled until an admin token is configured" in message


async def test_get_balance_for_the_calling_key(
    admin: admin_pb2_grpc.AdminServiceStub, channel: grpc.aio.Channel
) -> None:
    account = await new_account(admin)
    await admin.TopUpAccount(
        pb.TopUpAccountRequest(account_id=account.id, amount_micros=1_234_567, request_id="t"), metadata=MD
    )
    secret = (await admin.CreateApiKey(pb.CreateApiKeyRequest(account_id=account.id), metadata=MD)).secret
    metering = metering_pb2_grpc.MeteringServiceStub(channel)
    balance = await metering.GetBalance(metering_pb2.GetBalanceRequest(), metadata=admin_metadata(secret))
    assert (balance.account_id, balance.balance_micros, balance.held_micros, balance.available_micros) == (
        account.id,
        1_234_567,
        0,
        1_234_567,
    )
    for metadata in [(), admin_metadata(ADMIN_TOKEN), admin_metadata(secret[:-1] + ("y" if secret.endswith("x") else "x"))]:
        await expect_status(
            metering.GetBalance(metering_pb2.GetBalanceRequest(), metadata=metadata),
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_API_KEY",
        )
