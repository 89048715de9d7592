"""Heartbeats of in-process streams: a stream the core answers at once never touches the heartbeat timer.

Under `tollgate serve` the facade reads the core's stream in-process
(InlineStreamCall.read_nowait): a short answer that arrived whole is written
without ever waiting for the core, so there is no silence to time and the
stream adds no entry to the facade's heartbeat timer. A stream that does wait
gets its entry at its first wait, and its pings while the core is silent.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway_core.deadline_timer import DeadlineTimer
from gateway_core.in_process import InProcessServices
from gateway_core.pb.gateway.v1 import chat_pb2_grpc
from http_facade.app import create_app
from tests.facade_support import FakeChatService, Pause, text_deltas
from tests.integration.test_stream_heartbeat import PING, AsgiFacade, _texts


@pytest.fixture
def heartbeat_adds(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The keys added to any DeadlineTimer from now on (the facade's heartbeats add their _Heartbeat)."""
    added: list[object] = []
    real_add = DeadlineTimer.add

    def add(self: DeadlineTimer, key: Any, at: float, expire: Any) -> None:
        added.append(type(key).__name__)
        real_add(self, key, at, expire)

    monkeypatch.setattr(DeadlineTimer, "add", add)
    return added


def _in_process(fake: FakeChatService) -> Any:
    services = InProcessServices()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(fake, services)
    return services.channel()


async def test_a_stream_answered_at_once_needs_no_heartbeat(heartbeat_adds: list[object]) -> None:
    fake = FakeChatService()
    fake.stream = text_deltas("a", "b")
    async with AsgiFacade(create_app(_in_process(fake), heartbeat_seconds=0.05)) as client:
        body = await client.stream()
        assert len(client.facade.heartbeats) == 0
    assert _texts(body) == ["", "a", "b", None] and body.endswith(b"data: [DONE]\n\n")
    assert "_Heartbeat" not in heartbeat_adds


async def test_an_in_process_stream_that_waits_gets_its_heartbeat_at_the_first_wait(
        heartbeat_adds: list[object]) -> None:
    fake = FakeChatService()
    first, *rest = text_deltas("late")
    fake.stream = [first, Pause(0.35), *rest]
    async with AsgiFacade(create_app(_in_process(fake), heartbeat_seconds=0.1)) as client:
        body = await client.stream()
        assert len(client.facade.heartbeats) == 0  # ended: its entry is gone
    assert heartbeat_adds.count("_Heartbeat") >= 2  # added at the wait, set again after each ping
    before, _, after = body.partition(PING)
    assert _texts(before) == [""] and _texts(after) == ["late", None]  # pings only in the silence
    assert body.endswith(b"data: [DONE]\n\n")
