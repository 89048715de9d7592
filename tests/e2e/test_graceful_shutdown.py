"""SIGTERM and SIGINT on real `tollgate` processes: drain, settle, give up the lease, exit 0.

Each test runs `tollgate serve` (or `core`) as a subprocess on a SQLite file
in front of the fake OpenAI upstream's slow model, and checks the books
through the admin and metering gRPC APIs afterwards.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway_core.pb.gateway.admin.v1 import admin_pb2, admin_pb2_grpc
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc, metering_pb2, metering_pb2_grpc, types_pb2
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.process_support import TOLLGATE, free_port

ADMIN = "drain-test-admin-token-0123456789"
META = (("authorization", f"Bearer {ADMIN}"),)


# Every process a test started: one a failed test left running is killed at its teardown,
# or its pipe and Popen object would be reported (ResourceWarning) inside a later test.
_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


@dataclass
class Node:
    """One tollgate process's config and ports."""

    config: Path
    http_port: int
    grpc_port: int
    process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, command: str = "serve") -> Node:
        self.process = subprocess.Popen([*TOLLGATE, command, "--config", str(self.config)],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _STARTED.append(self.process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.communicate()[0]
            if _serving(self, command):
                return self
            time.sleep(0.1)
        self.process.kill()
        raise AssertionError(f"tollgate {command} did not become ready")

    def signal(self, sig: signal.Signals = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 40) -> tuple[int, str]:
        assert self.process is not None
        output, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, output


def _serving(node: Node, command: str) -> bool:
    if command == "core":
        with grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    try:
        return httpx.get(f"{node.url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _node(tmp_path: Path, upstream: FakeOpenAIUpstream, name: str, grace: float) -> Node:
    http_port, grpc_port = free_port(), free_port()
    config = tmp_path / f"{name}.toml"
    config.write_text(f"""
[server]
http_address = "127.0.0.1:{http_port}"
grpc_address = "127.0.0.1:{grpc_port}"
shutdown_grace_seconds = {grace}
[database]
url = "sqlite:///{tmp_path / 'shared.db'}"
[admin]
token = "{ADMIN}"
[metering]
reconcile_interval_seconds = 0.25
orphan_after_seconds = 60
[[providers]]
name = "up"
type = "openai"
base_url = "{upstream.base_url}"
[[models]]
name = "slow"
routes = [{{ provider = "up", model = "fake-slow" }}]
input_price = 2
output_price = 5
[[models]]
name = "hang"                     # unary: answers after the upstream's hang_seconds
routes = [{{ provider = "up", model = "fake-hang" }}]
input_price = 2
output_price = 5
""")
    return Node(config, http_port, grpc_port)


def _account(node: Node, usd: int = 20) -> tuple[str, str]:
    with grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        account = admin.CreateAccount(admin_pb2.CreateAccountRequest(display_name="drain"), metadata=META).account
        admin.TopUpAccount(admin_pb2.TopUpAccountRequest(
            account_id=account.id, amount_micros=usd * 1_000_000, request_id="topup"), metadata=META)
        key = admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(account_id=account.id), metadata=META).secret
    return account.id, key


@dataclass
class StreamResult:
    """What one client saw of one streamed request."""

    status: int = 0
    request_id: str = ""
    events: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == "data: [DONE]"


def _stream(url: str, key: str, result: StreamResult, started: threading.Event | None = None) -> None:
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True},
                          timeout=60) as response:
            result.status = response.status_code
            result.request_id = response.headers.get("x-request-id", "")
            for line in response.iter_lines():
                if line:
                    result.events.append(line)
                    if started is not None:
                        started.set()
            if response.status_code != 200:
                result.error = "".join(result.events)
    except httpx.HTTPError as error:
        result.error = repr(error)
    finally:
        if started is not None:
            started.set()


@dataclass
class Books:
    """One account's books after the processes stopped."""

    balance_micros: int
    held_micros: int
    entries: list[admin_pb2.LedgerEntry]
    usage: list[metering_pb2.UsageRecord]

    def holds(self) -> list[str]:
        return [e.request_id for e in self.entries if e.kind == admin_pb2.LEDGER_ENTRY_KIND_HOLD]

    def check(self) -> None:
        """Every hold closed once, one usage record per admitted request, the ledger sums to the balance."""
        holds = self.holds()
        closes = [e.request_id for e in self.entries
                  if e.kind in (admin_pb2.LEDGER_ENTRY_KIND_SETTLE, admin_pb2.LEDGER_ENTRY_KIND_RELEASE)]
        assert len(holds) == len(set(holds)) and set(holds) == set(closes)
        assert sorted(r.request_id for r in self.usage) == sorted(holds)
        assert sum(e.amount_micros for e in self.entries) == self.balance_micros
        assert self.held_micros == 0


def _books(node: Node, account_id: str, key: str) -> Books:
    """Reads the books through a fresh core on the same database."""
    node.start("core")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            account = admin.GetAccount(admin_pb2.GetAccountRequest(account_id=account_id), metadata=META).account
            entries = list(admin.ListLedgerEntries(
                admin_pb2.ListLedgerEntriesRequest(account_id=account_id, page_size=1000), metadata=META).entries)
            usage = list(metering_pb2_grpc.MeteringServiceStub(channel).ListUsageRecords(
                metering_pb2.ListUsageRecordsRequest(page_size=1000),
                metadata=(("authorization", f"Bearer {key}"),)).usage_records)
    finally:
        node.signal()
        assert node.wait()[0] == 0
    return Books(account.balance_micros, account.held_micros, entries, usage)


def _until_unready(node: Node) -> None:
    """Waits (a loaded machine may take a moment to deliver the signal) for /readyz to turn 503."""
    deadline = time.monotonic() + 10
    while httpx.get(f"{node.url}/readyz", timeout=5).status_code != 503:
        assert time.monotonic() < deadline, "/readyz never turned 503"
        time.sleep(0.05)


def _instances(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "shared.db") as db:
        return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])


def _unary(url: str, key: str, into: list[httpx.Response]) -> None:
    into.append(httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "hang", "messages": [{"role": "user", "content": "hi"}]}, timeout=30))


def test_sigterm_mid_stream_lets_it_finish_refuses_new_work_and_exits_0(tmp_path: Path) -> None:
    with FakeOpenAIUpstream(slow_chunks=20, slow_interval=0.1, hang_seconds=1.5) as upstream:
        node = _node(tmp_path, upstream, "a", grace=30).start()
        account_id, key = _account(node)
        result, started = StreamResult(), threading.Event()
        client = threading.Thread(target=_stream, args=(node.url, key, result, started))
        client.start()
        unary: list[httpx.Response] = []
        unary_client = threading.Thread(target=_unary, args=(node.url, key, unary))
        unary_client.start()
        assert started.wait(10)
        time.sleep(0.2)  # the unary request is admitted and waiting on its upstream
        node.signal(signal.SIGTERM)
        _until_unready(node)
        assert httpx.get(f"{node.url}/healthz", timeout=5).status_code == 200, "alive while draining"
        refused = httpx.post(f"{node.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                             json={"model": "slow", "messages": [{"role": "user", "content": "hi"}]}, timeout=5)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "server_shutting_down"
        assert refused.headers["connection"] == "close"
        with grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel:
            with pytest.raises(grpc.RpcError) as direct:
                chat_pb2_grpc.ChatServiceStub(channel).CreateChatCompletion(
                    chat_pb2.CreateChatCompletionRequest(model="slow"), timeout=5,
                    metadata=(("authorization", f"Bearer {key}"),))
            assert direct.value.code() == grpc.StatusCode.UNAVAILABLE

        client.join(30)
        unary_client.join(30)
        code, output = node.wait()
        assert code == 0, output
    assert result.status == 200 and result.done, result
    (answered,) = unary
    assert answered.status_code == 200 and answered.json()["choices"][0]["message"]["content"]
    books = _books(node, account_id, key)
    books.check()
    assert sorted(books.holds()) == sorted([result.request_id, answered.headers["x-request-id"]]), \
        "the refused requests were never admitted"
    assert all(r.status == metering_pb2.USAGE_STATUS_OK and r.completion_tokens > 0 for r in books.usage)
    assert _instances(tmp_path) == 0, "each clean stop gave up its lease"


def test_streams_still_open_after_grace_are_cut_in_band_and_billed(tmp_path: Path) -> None:
    with FakeOpenAIUpstream(slow_chunks=200, slow_interval=0.05) as upstream:
        node = _node(tmp_path, upstream, "a", grace=1).start()
        account_id, key = _account(node)
        result, started = StreamResult(), threading.Event()
        client = threading.Thread(target=_stream, args=(node.url, key, result, started))
        client.start()
        assert started.wait(10)
        signalled = time.monotonic()
        node.signal(signal.SIGINT)
        client.join(30)
        code, output = node.wait()
        took = time.monotonic() - signalled
        assert code == 0, output
    assert result.status == 200 and not result.done
    error = json.loads(result.events[-1].removeprefix("data: "))["error"]
    assert error["code"] == "server_shutting_down" and error["type"] == "server_error"
    assert took < 15, took
    books = _books(node, account_id, key)
    books.check()
    (record,) = books.usage
    assert record.request_id == result.request_id
    assert record.status == metering_pb2.USAGE_STATUS_CANCELLED
    assert record.completion_tokens > 0 and record.cost_micros > 0, "billed for what was sent"


def test_a_second_signal_stops_at_once_and_still_settles(tmp_path: Path) -> None:
    with FakeOpenAIUpstream(slow_chunks=400, slow_interval=0.05) as upstream:
        node = _node(tmp_path, upstream, "a", grace=60).start()
        account_id, key = _account(node)
        result, started = StreamResult(), threading.Event()
        client = threading.Thread(target=_stream, args=(node.url, key, result, started))
        client.start()
        assert started.wait(10)
        node.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert node.process is not None and node.process.poll() is None, "still draining within grace"
        hurried = time.monotonic()
        node.signal(signal.SIGTERM)
        code, output = node.wait()
        took = time.monotonic() - hurried
        client.join(30)
    assert code == 0, output
    assert took < 12, took  # drain_seconds (5) for the cut stream's usage, then out; far below the 60 s grace
    assert not result.done
    books = _books(node, account_id, key)
    books.check()
    (record,) = books.usage
    assert record.request_id == result.request_id
    assert record.status == metering_pb2.USAGE_STATUS_CANCELLED, "settled by this process, not left to a peer"
    assert record.completion_tokens > 0 and record.cost_micros > 0


def test_core_alone_turns_not_serving_and_refuses_new_calls(tmp_path: Path) -> None:
    with FakeOpenAIUpstream(slow_chunks=20, slow_interval=0.1) as upstream:
        node = _node(tmp_path, upstream, "a", grace=30).start("core")
        account_id, key = _account(node)
        auth = (("authorization", f"Bearer {key}"),)
        with grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel:
            chat = chat_pb2_grpc.ChatServiceStub(channel)
            stream = chat.StreamChatCompletion(chat_pb2.StreamChatCompletionRequest(
                model="slow", messages=[chat_pb2.Message(role=types_pb2.ROLE_USER, content="hi")]),
                metadata=auth, timeout=30)
            first = next(stream)
            assert first.choices
            node.signal(signal.SIGTERM)
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 10
            # While it drains the server still takes calls: health answers (never a reset), and the
            # call gate refuses chat calls with a retryable UNAVAILABLE of its own.
            while True:  # a loaded machine may take a moment to deliver the signal
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                assert time.monotonic() < deadline, "health never turned NOT_SERVING"
                time.sleep(0.05)
            for _ in range(10):
                with pytest.raises(grpc.RpcError) as refused:
                    chat.CreateChatCompletion(chat_pb2.CreateChatCompletionRequest(model="slow"), metadata=auth, timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert refused.value.details() == "the server is shutting down"
            rest = list(stream)
        assert rest and rest[-1].usage.total_tokens > 0, "the in-flight stream ran to its billed end"
        code, output = node.wait()
        assert code == 0, output
    _books(node, account_id, key).check()
    assert _instances(tmp_path) == 0


def test_rolling_restart_under_load_loses_no_usage_record(tmp_path: Path) -> None:
    with FakeOpenAIUpstream(slow_chunks=8, slow_interval=0.05) as upstream:
        nodes = [_node(tmp_path, upstream, "a", grace=20).start(), _node(tmp_path, upstream, "b", grace=20).start()]
        account_id, key = _account(nodes[0])
        stop = threading.Event()
        results: list[StreamResult] = []

        def load(worker: int) -> None:
            turn = worker
            while not stop.is_set():
                # The test is the load balancer: round robin, skipping a node that refuses.
                result = StreamResult()
                _stream(nodes[turn % 2].url, key, result)
                results.append(result)
                turn += 1

        workers = [threading.Thread(target=load, args=(i,)) for i in range(4)]
        for worker in workers:
            worker.start()
        try:
            time.sleep(1.0)
            for node in nodes:
                node.signal(signal.SIGTERM)
                code, output = node.wait()
                assert code == 0, output
                node.start()
                time.sleep(1.0)
        finally:
            stop.set()
            for worker in workers:
                worker.join(60)
            for node in nodes:
                node.signal(signal.SIGTERM)
                assert node.wait()[0] == 0
    admitted = [r for r in results if r.status == 200]
    refused = [r for r in results if r.status == 503]
    broken = [r for r in results if r not in admitted and r not in refused]
    # A connection refused while a node restarts is a client-side retry, never an admitted request.
    assert all("ConnectError" in r.error for r in broken), broken
    assert all(r.done for r in admitted), [r for r in admitted if not r.done]
    assert len(admitted) >= 10, len(results)
    books = _books(nodes[0], account_id, key)
    books.check()
    assert sorted(books.holds()) == sorted(r.request_id for r in admitted)
    assert _instances(tmp_path) == 0


def test_facade_alone_cuts_its_streams_and_the_core_bills_them(tmp_path: Path) -> None:
    with FakeOpenAIUpstream(slow_chunks=200, slow_interval=0.05) as upstream:
        node = _node(tmp_path, upstream, "a", grace=1).start("core")
        account_id, key = _account(node)
        facade = subprocess.Popen([*TOLLGATE, "facade", "--core", f"127.0.0.1:{node.grpc_port}",
                                   "--config", str(node.config)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 30
            while not _serving(node, "serve"):
                assert time.monotonic() < deadline and facade.poll() is None, "facade did not start"
                time.sleep(0.1)
            result, started = StreamResult(), threading.Event()
            client = threading.Thread(target=_stream, args=(node.url, key, result, started))
            client.start()
            assert started.wait(10)
            facade.send_signal(signal.SIGTERM)
            _until_unready(node)
            assert httpx.get(f"{node.url}/healthz", timeout=5).status_code == 200
            client.join(30)
            output, _ = facade.communicate(timeout=30)
            assert facade.returncode == 0, output
        finally:
            if facade.poll() is None:
                facade.kill()
        assert not result.done
        assert json.loads(result.events[-1].removeprefix("data: "))["error"]["code"] == "server_shutting_down"
        assert _serving(node, "core"), "the core behind it is untouched"
        node.signal()
        assert node.wait()[0] == 0
    books = _books(node, account_id, key)
    books.check()
    (record,) = books.usage
    assert record.request_id == result.request_id and record.status == metering_pb2.USAGE_STATUS_CANCELLED


def test_a_facade_that_cannot_bind_stops_the_core_cleanly(tmp_path: Path) -> None:
    with FakeOpenAIUpstream() as upstream, socket.socket() as taken:
        node = _node(tmp_path, upstream, "a", grace=5)
        taken.bind(("127.0.0.1", node.http_port))
        taken.listen()
        run = subprocess.run([*TOLLGATE, "serve", "--config", str(node.config)],
                             capture_output=True, text=True, timeout=60)
    assert run.returncode == 3, run.stderr
    assert "Traceback" not in run.stderr and "address already in use" in run.stderr
    assert "error: the HTTP facade could not start" in run.stderr
    assert _instances(tmp_path) == 0, "the core stopped and gave up its lease"
