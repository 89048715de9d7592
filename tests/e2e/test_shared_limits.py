"""Two `tollgate serve` processes on one database and one real redis-server share their limits;
with Redis gone, the fail-open process admits and the fail-closed one answers 503."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from gateway_core.pb.gateway.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.process_support import free_port, start_serve
from tests.redis_support import RedisServer, running_redis

ADMIN = "shared-limits-admin-token-0123456789"
META = (("authorization", f"Bearer {ADMIN}"),)
HELLO = {"model": "text", "messages": [{"role": "user", "content": "hi"}]}


def _config(tmp_path: Path, name: str, upstream: FakeOpenAIUpstream, redis_url: str, policy: str,
            http_port: int, grpc_port: int) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[server]
http_address = "127.0.0.1:{http_port}"
grpc_address = "127.0.0.1:{grpc_port}"
[database]
url = "sqlite:///{tmp_path / 'shared.db'}"
[admin]
token = "{ADMIN}"
[limits]
redis_url = "{redis_url}"
redis_failure_policy = "{policy}"
[[providers]]
name = "up"
type = "openai"
base_url = "{upstream.base_url}"
[[models]]
name = "text"
routes = [{{ provider = "up", model = "fake-text" }}]
input_price = 2
output_price = 5
[[models]]
name = "slow"
routes = [{{ provider = "up", model = "fake-slow" }}]
input_price = 2
output_price = 5
""")
    return path


class Pair:
    """Two gateways (fail-open A, fail-closed B), their URLs and admin access through A."""

    def __init__(self, urls: list[str], grpc_target: str, redis: RedisServer, upstream: FakeOpenAIUpstream) -> None:
        self.urls = urls
        self.grpc_target = grpc_target
        self.redis = redis
        self.upstream = upstream

    def key(self, **limits: int) -> str:
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            account = stub.CreateAccount(admin_pb2.CreateAccountRequest(display_name="shared"), metadata=META).account
            stub.TopUpAccount(admin_pb2.TopUpAccountRequest(
                account_id=account.id, amount_micros=10_000_000, request_id=f"seed-{account.id}"), metadata=META)
            return stub.CreateApiKey(
                admin_pb2.CreateApiKeyRequest(account_id=account.id, **limits), metadata=META).secret


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp_path = tmp_path_factory.mktemp("shared")
    with FakeOpenAIUpstream(slow_chunks=30, slow_interval=0.1) as upstream, running_redis(tmp_path) as redis:
        processes: list[subprocess.Popen[bytes]] = []
        urls: list[str] = []
        grpc_ports: list[int] = []
        try:
            for name, policy in (("a", "open"), ("b", "closed")):
                http_port, grpc_port = free_port(), free_port()
                config = _config(tmp_path, name, upstream, redis.url, policy, http_port, grpc_port)
                processes.append(start_serve(config, http_port))  # one at a time: the first one migrates
                urls.append(f"http://127.0.0.1:{http_port}")
                grpc_ports.append(grpc_port)
            yield Pair(urls, f"127.0.0.1:{grpc_ports[0]}", redis, upstream)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()


def _post(url: str, key: str, body: dict[str, object] = HELLO) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body, timeout=30)


def test_rpm_is_shared_between_two_processes(pair: Pair) -> None:
    key = pair.key(rpm_limit=4)
    statuses = [_post(pair.urls[i % 2], key).status_code for i in range(8)]
    assert statuses == [200] * 4 + [429] * 4
    refused = _post(pair.urls[1], key)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-limit-requests"] == "4"
    assert int(refused.headers["retry-after"]) >= 1


def test_concurrency_is_shared_between_two_processes(pair: Pair) -> None:
    key = pair.key(concurrency_limit=1)
    slow = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"{pair.urls[0]}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json=slow, timeout=30) as streaming:
        assert streaming.status_code == 200
        lines = streaming.iter_lines()
        next(lines)
        before = len(pair.upstream.requests)
        refused = _post(pair.urls[1], key)
        assert refused.status_code == 429 and "concurrent" in refused.json()["error"]["message"]
        assert len(pair.upstream.requests) == before
        assert [line for line in lines if line][-1] == "data: [DONE]"
    assert _post(pair.urls[1], key).status_code == 200  # the slot came back when the stream settled


def test_redis_down_fail_open_admits_and_fail_closed_refuses(pair: Pair) -> None:
    key = pair.key(rpm_limit=1000)
    assert _post(pair.urls[0], key).status_code == 200
    pair.redis.stop()
    started = time.monotonic()
    opened = _post(pair.urls[0], key)
    assert opened.status_code == 200 and "x-ratelimit-limit-requests" not in opened.headers
    closed = _post(pair.urls[1], key)
    assert time.monotonic() - started < 5, "a dead Redis must not stall requests"
    assert closed.status_code == 503
    assert closed.json()["error"]["code"] == "limits_unavailable"
    assert closed.headers["retry-after"] == "1"
