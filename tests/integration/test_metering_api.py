"""MeteringService over a real grpc.aio server on port 0: usage paging, windows, totals, isolation, balance."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import update
from sqlmodel import col

from gateway_core.errors import error_info
from gateway_core.metering.ledger import Ledger
from gateway_core.metering.outcome import UsageStatus
from gateway_core.pb.gateway.v1 import metering_pb2 as pb
from gateway_core.pb.gateway.v1 import metering_pb2_grpc
from gateway_core.store import Store
from gateway_core.store.models import UsageRecord
from tests.ledger_support import PEPPER, funded_key, make_stale, outcome
from tests.store_support import RunningServer, admin_metadata, running_server

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Caller:
    """An account, the key its requests are held on, and metadata that calls as another key of it."""

    account_id: str
    key_id: str
    metadata: tuple[tuple[str, str], ...]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path) as running:
        yield running


@pytest.fixture
async def metering(server: RunningServer) -> AsyncIterator[metering_pb2_grpc.MeteringServiceStub]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield metering_pb2_grpc.MeteringServiceStub(channel)


@pytest.fixture
def ledger(server: RunningServer) -> Ledger:
    return Ledger(server.store.db, instance_id="core-metering-test")


async def caller(store: Store, balance: int = 1_000_000) -> Caller:
    key = await funded_key(store, balance)
    _, secret = await store.create_api_key(key.account_id, pepper=PEPPER)  # a second key of the same account
    return Caller(key.account_id, key.key_id, admin_metadata(secret))


async def metered(
    ledger: Ledger, store: Store, who: Caller, request_id: str, *, at: datetime, model: str = "m", cost: int = 100
) -> None:
    """One settled request of who's account, dated at (usage records are dated at admission)."""
    hold = await ledger.hold(
        request_id=request_id, account_id=who.account_id, api_key_id=who.key_id, amount_micros=1_000
    )
    await ledger.settle(hold, outcome(cost, model=model, prompt_tokens=3, completion_tokens=4))
    with store.db.engine.begin() as connection:
        connection.execute(update(UsageRecord).where(col(UsageRecord.request_id) == request_id).values(created_at=at))


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


async def list_all(
    metering: metering_pb2_grpc.MeteringServiceStub, who: Caller, page_size: int, **window: timestamp_pb2.Timestamp
) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        reply = await metering.ListUsageRecords(
            pb.ListUsageRecordsRequest(page_size=page_size, page_token=token, **window), metadata=who.metadata
        )
        pages.append([r.request_id for r in reply.usage_records])
        token = reply.next_page_token
        if not token:
            return pages


async def test_usage_records_page_newest_first_without_gaps(
    server: RunningServer, metering: metering_pb2_grpc.MeteringServiceStub, ledger: Ledger
) -> None:
    me = await caller(server.store)
    for i in range(7):
        await metered(ledger, server.store, me, f"r{i}", at=T0 + timedelta(minutes=i))
    await metered(ledger, server.store, me, "r3b", at=T0 + timedelta(minutes=3))  # a tie on time: id breaks it
    pages = await list_all(metering, me, page_size=3)
    assert pages == [["r6", "r5", "r4"], ["r3b", "r3", "r2"], ["r1", "r0"]]
    everything = await metering.ListUsageRecords(pb.ListUsageRecordsRequest(), metadata=me.metadata)
    assert len(everything.usage_records) == 8 and everything.next_page_token == ""  # default page size 50


async def test_a_usage_record_carries_every_field(
    server: RunningServer, metering: metering_pb2_grpc.MeteringServiceStub, ledger: Ledger
) -> None:
    me = await caller(server.store)
    await metered(ledger, server.store, me, "r1", at=T0, model="mock-chat", cost=5_000)  # above the hold: clamped
    (record,) = (await metering.ListUsageRecords(pb.ListUsageRecordsRequest(), metadata=me.metadata)).usage_records
    assert record == pb.UsageRecord(
        request_id="r1",
        account_id=me.account_id,
        api_key_id=me.key_id,
        model="mock-chat",
        provider="mock",
        upstream_model="up-mock-chat",
        prompt_tokens=3,
        completion_tokens=4,
        cost_micros=1_000,
        status=pb.USAGE_STATUS_OK,
        latency_ms=120,
        time_to_first_token_ms=15,
        estimated=False,
        create_time=ts(T0),
        clamped=True,
        held_micros=1_000,
    )


async def test_abandoned_requests_are_listed_as_such(
    server: RunningServer, metering: metering_pb2_grpc.MeteringServiceStub, ledger: Ledger
) -> None:
    me = await caller(server.store)
    await ledger.hold(request_id="lost", account_id=me.account_id, api_key_id=me.key_id, amount_micros=500, model="m")
    make_stale(server.store.db.engine, ledger.instance_id)
    assert await Ledger(server.store.db, instance_id="core-b").release_orphans(stale_after_seconds=30) == 1
    (record,) = (await metering.ListUsageRecords(pb.ListUsageRecordsRequest(), metadata=me.metadata)).usage_records
    assert (record.status, record.estimated, record.cost_micros, record.held_micros) == (
        pb.USAGE_STATUS_ABANDONED,
        True,
        0,
        500,
    )


async def test_time_window_is_start_inclusive_end_exclusive(
    server: RunningServer, metering: metering_pb2_grpc.MeteringServiceStub, ledger: Ledger
) -> None:
    me = await caller(server.store)
    for i in range(6):
        await metered(ledger, server.store, me, f"r{i}", at=T0 + timedelta(hours=i))
    window = {"start_time": ts(T0 + timedelta(hours=1)), "end_time": ts(T0 + timedelta(hours=4))}
    assert await list_all(metering, me, page_size=2, **window) == [["r3", "r2"], ["r1"]]
    assert await list_all(metering, me, page_size=0, start_time=ts(T0 + timedelta(hours=4))) == [["r5", "r4"]]
    assert await list_all(metering, me, page_size=0, end_time=ts(T0 + timedelta(hours=1))) == [["r0"]]


async def test_a_key_sees_only_its_own_account(
    server: RunningServer, metering: metering_pb2_grpc.MeteringServiceStub, ledger: Ledger
) -> None:
    alice, bob = await caller(server.store), await caller(server.store)
    for i in range(3):
        await metered(ledger, server.store, alice, f"alice-{i}", at=T0 + timedelta(minutes=i), model="a")
    await metered(ledger, server.store, bob, "bob-0", at=T0, model="b")
    assert await list_all(metering, alice, page_size=2) == [["alice-2", "alice-1"], ["alice-0"]]
    assert await list_all(metering, bob, page_size=2) == [["bob-0"]]
    # Alice's page token does not open Alice's records to Bob: the account comes from the key.
    first = await metering.ListUsageRecords(pb.ListUsageRecordsRequest(page_size=1), metadata=alice.metadata)
    token = first.next_page_token
    reply = await metering.ListUsageRecords(pb.ListUsageRecordsRequest(page_token=token), metadata=bob.metadata)
    assert [r.request_id for r in reply.usage_records] == ["bob-0"]
    summary = await metering.SummarizeUsage(pb.SummarizeUsageRequest(), metadata=bob.metadata)
    assert [s.model for s in summary.summaries] == ["b"]


async def test_summarize_usage_totals_per_model_sorted(
    server: RunningServer, metering: metering_pb2_grpc.MeteringServiceStub, ledger: Ledger
) -> None:
    me = await caller(server.store)
    plan = [("zeta", 10, 0), ("alpha", 20, 1), ("zeta", 30, 2), ("alpha", 40, 3), ("mid", 50, 4), ("zeta", 60, 5)]
    for i, (model, cost, hour) in enumerate(plan):
        await metered(ledger, server.store, me, f"r{i}", at=T0 + timedelta(hours=hour), model=model, cost=cost)
    summary = await metering.SummarizeUsage(pb.SummarizeUsageRequest(), metadata=me.metadata)
    assert list(summary.summaries) == [
        pb.ModelUsageSummary(model="alpha", request_count=2, prompt_tokens=6, completion_tokens=8, cost_micros=60),
        pb.ModelUsageSummary(model="mid", request_count=1, prompt_tokens=3, completion_tokens=4, cost_micros=50),
        pb.ModelUsageSummary(model="zeta", request_count=3, prompt_tokens=9, completion_tokens=12, cost_micros=100),
    ]
    window = pb.SummarizeUsageRequest(start_time=ts(T0 + timedelta(hours=2)), end_time=ts(T0 + timedelta(hours=5)))
    windowed = await metering.SummarizeUsage(window, metadata=me.metadata)
    assert [(s.model, s.request_count, s.cost_micros) for s in windowed.summaries] == [
        ("alpha", 1, 40),
        ("mid", 1, 50),
        ("zeta", 1, 30),
    ]
    empty = await metering.SummarizeUsage(pb.SummarizeUsageRequest(end_time=ts(T0)), metadata=me.metadata)
    assert list(empty.summaries) == []


async def test_get_balance_shows_what_an_open_hold_holds(
    server: RunningServer, metering: metering_pb2_grpc.MeteringServiceStub, ledger: Ledger
) -> None:
    me = await caller(server.store, balance=10_000)
    hold = await ledger.hold(request_id="r1", account_id=me.account_id, api_key_id=me.key_id, amount_micros=3_000)
    during = await metering.GetBalance(pb.GetBalanceRequest(), metadata=me.metadata)
    assert (during.balance_micros, during.held_micros, during.available_micros) == (10_000, 3_000, 7_000)
    await ledger.settle(hold, outcome(1_250, status=UsageStatus.CANCELLED))
    after = await metering.GetBalance(pb.GetBalanceRequest(), metadata=me.metadata)
    assert (after.balance_micros, after.held_micros, after.available_micros) == (8_750, 0, 8_750)
    (record,) = (await metering.ListUsageRecords(pb.ListUsageRecordsRequest(), metadata=me.metadata)).usage_records
    assert record.status == pb.USAGE_STATUS_CANCELLED


async def expect_invalid(call: object, param: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call  # type: ignore[misc]
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(exc.value)
    assert info is not None and info.reason == "INVALID_REQUEST" and info.metadata["param"] == param


async def test_bad_arguments_are_invalid_requests(
    server: RunningServer, metering: metering_pb2_grpc.MeteringServiceStub
) -> None:
    me = await caller(server.store)
    list_ = metering.ListUsageRecords
    await expect_invalid(list_(pb.ListUsageRecordsRequest(page_size=-1), metadata=me.metadata), "page_size")
    await expect_invalid(list_(pb.ListUsageRecordsRequest(page_token="garbage"), metadata=me.metadata), "page_token")
    backwards = pb.ListUsageRecordsRequest(start_time=ts(T0), end_time=ts(T0 - timedelta(seconds=1)))
    await expect_invalid(list_(backwards, metadata=me.metadata), "end_time")
    out_of_range = pb.SummarizeUsageRequest(start_time=timestamp_pb2.Timestamp(seconds=10**15))
    await expect_invalid(metering.SummarizeUsage(out_of_range, metadata=me.metadata), "start_time")


async def test_usage_rpcs_need_a_valid_user_key(metering: metering_pb2_grpc.MeteringServiceStub) -> None:
    for call in (
        metering.ListUsageRecords(pb.ListUsageRecordsRequest()),
        metering.SummarizeUsage(pb.SummarizeUsageRequest(), metadata=admin_metadata()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
