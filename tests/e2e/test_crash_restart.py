"""kill -9 of a serving gateway under load, then a restart: nothing acknowledged is lost or doubled,
and every hold the dead process left is released by the reconciler."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import httpx

from gateway_core.pb.gateway.admin.v1 import admin_pb2, admin_pb2_grpc
from gateway_core.pb.gateway.v1 import metering_pb2, metering_pb2_grpc
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.process_support import free_port, start_serve

ADMIN = "crash-test-admin-token-0123456789"
META = (("authorization", f"Bearer {ADMIN}"),)


def _config(tmp_path: Path, upstream: FakeOpenAIUpstream, http_port: int, grpc_port: int) -> Path:
    path = tmp_path / "tollgate.toml"
    path.write_text(f"""
[server]
http_address = "127.0.0.1:{http_port}"
grpc_address = "127.0.0.1:{grpc_port}"
[database]
url = "sqlite:///{tmp_path / 'crash.db'}"
[admin]
token = "{ADMIN}"
[metering]
reconcile_interval_seconds = 0.25
orphan_after_seconds = 1.0
[[providers]]
name = "up"
type = "openai"
base_url = "{upstream.base_url}"
[[models]]
name = "slow"
routes = [{{ provider = "up", model = "fake-slow" }}]
input_price = 2
output_price = 5
""")
    return path


def _stream(url: str, key: str, done: list[str], broken: list[str]) -> None:
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True},
                          timeout=30) as response:
            request_id = response.headers["x-request-id"]
            lines = [line for line in response.iter_lines() if line]
        (done if lines and lines[-1] == "data: [DONE]" else broken).append(request_id)
    except httpx.HTTPError:
        broken.append("?")


def test_kill_9_under_load_then_restart_keeps_the_books(tmp_path: Path) -> None:
    http_port, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{http_port}"
    with FakeOpenAIUpstream(slow_chunks=15, slow_interval=0.1) as upstream:
        config = _config(tmp_path, upstream, http_port, grpc_port)
        process = start_serve(config, http_port)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            account = admin.CreateAccount(admin_pb2.CreateAccountRequest(display_name="crash"), metadata=META).account
            key = admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(account_id=account.id), metadata=META).secret
            acknowledged = []
            for i in range(5):
                admin.TopUpAccount(admin_pb2.TopUpAccountRequest(
                    account_id=account.id, amount_micros=1_000_000, request_id=f"topup-{i}"), metadata=META)
                acknowledged.append(f"topup-{i}")
        done: list[str] = []
        broken: list[str] = []
        # Finished streams first, then a wave that is cut by the kill.
        _stream(url, key, done, broken)
        wave = [threading.Thread(target=_stream, args=(url, key, done, broken)) for _ in range(6)]
        for thread in wave:
            thread.start()
        time.sleep(0.6)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        for thread in wave:
            thread.join(timeout=30)
        assert len(done) >= 1 and broken, (done, broken)

        process = start_serve(config, http_port)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                admin = admin_pb2_grpc.AdminServiceStub(channel)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    current = admin.GetAccount(admin_pb2.GetAccountRequest(account_id=account.id), metadata=META).account
                    if current.held_micros == 0:
                        break
                    time.sleep(0.2)
                assert current.held_micros == 0, "the dead process's holds were released"
                entries = list(admin.ListLedgerEntries(
                    admin_pb2.ListLedgerEntriesRequest(account_id=account.id, page_size=1000), metadata=META).entries)
                # A retried top-up after the restart is still credited once.
                admin.TopUpAccount(admin_pb2.TopUpAccountRequest(
                    account_id=account.id, amount_micros=1_000_000, request_id="topup-0"), metadata=META)
                after = admin.GetAccount(admin_pb2.GetAccountRequest(account_id=account.id), metadata=META).account
                usage = metering_pb2_grpc.MeteringServiceStub(channel).ListUsageRecords(
                    metering_pb2.ListUsageRecordsRequest(page_size=1000),
                    metadata=(("authorization", f"Bearer {key}"),)).usage_records
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    top_ups = [e.request_id for e in entries if e.kind == admin_pb2.LEDGER_ENTRY_KIND_TOP_UP]
    assert sorted(top_ups) == sorted(acknowledged)
    assert sum(e.amount_micros for e in entries) == current.balance_micros == after.balance_micros
    holds = [e.request_id for e in entries if e.kind == admin_pb2.LEDGER_ENTRY_KIND_HOLD]
    closes = [e.request_id for e in entries if e.kind in (admin_pb2.LEDGER_ENTRY_KIND_SETTLE, admin_pb2.LEDGER_ENTRY_KIND_RELEASE)]
    assert set(holds) == set(closes), "every hold was settled or released"
    assert len(holds) == len(set(holds)) and set(done) <= set(holds)
    assert len(usage) == len(holds), "exactly one usage record per admitted request"
    assert current.balance_micros < 5_000_000, "finished streams were charged"
