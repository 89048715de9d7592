"""A client that leaves while the gateway waits on the core: the facade's own protocol tells the
request (no watcher task), and the core call, with the upstream request behind it, is cancelled.

Raw sockets against a running gateway (facade under uvicorn with the edge protocol); the upstream
is the fake OpenAI server's `fake-hang` model, which answers nothing until its client goes away.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.gateway_support import TRANSPORTS, RunningGateway, running_gateway, settings_for


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIUpstream]:
    with FakeOpenAIUpstream() as fake:
        yield fake


@pytest.fixture(scope="module", params=TRANSPORTS)
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            upstream: FakeOpenAIUpstream) -> Iterator[RunningGateway]:
    settings = settings_for(
        tmp_path_factory.mktemp("gone"),
        providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url}],
        models=[{"name": "hang", "routes": [{"provider": "up", "model": "fake-hang"}],
                 "input_price": 1, "output_price": 1}],
        metering={"drain_seconds": 0.2},
    )
    with running_gateway(settings, in_process=request.param == "in_process") as running:
        yield running


@pytest.mark.parametrize("stream", [False, True])
def test_leaving_during_the_core_call_cancels_the_upstream_request(
    gateway: RunningGateway, upstream: FakeOpenAIUpstream, stream: bool
) -> None:
    key = gateway.create_key()[2]
    body = json.dumps({"model": "hang", "messages": [{"role": "user", "content": "hi"}], "stream": stream}).encode()
    host, port = gateway.http_url.removeprefix("http://").rsplit(":", 1)
    before, seen = upstream.disconnects, len(upstream.requests)
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (key.encode(), len(body), body))
        deadline = time.monotonic() + 10
        while len(upstream.requests) == seen:  # until the upstream request is open (and hanging)
            assert time.monotonic() < deadline, "the request never reached the upstream"
            time.sleep(0.02)
        conn.settimeout(0.01)
        with pytest.raises(TimeoutError):
            conn.recv(1)  # no answer yet: the gateway is waiting on the upstream
    assert upstream.wait_for_disconnects(before + 1, timeout=10), "the upstream request was not cancelled"
