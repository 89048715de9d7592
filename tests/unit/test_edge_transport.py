"""The edge protocol's transport: a response's start goes out in one write, closing flushes first."""

from __future__ import annotations

import asyncio
from typing import Any

from http_facade.edge_protocol import _EdgeTransport


class _Recording(asyncio.Transport):
    """Records what reaches the socket layer, as asyncio's own transport would send it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))
        self.events.append("write")

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.events.append("eof")

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def get_write_buffer_size(self) -> int:
        return 0


async def test_writes_after_hold_leave_in_one_send_at_the_end_of_the_step() -> None:
    raw = _Recording()
    edge = _EdgeTransport(raw, asyncio.get_running_loop())
    edge.hold()
    edge.write(b"HTTP/1.1 200 OK\r\n\r\n")
    edge.write(b"body")
    assert raw.writes == [] and edge.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\n") + 4
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    edge.write(b"data: 1\n\n")  # later writes (a stream's chunks) go straight through
    assert raw.writes[-1] == b"data: 1\n\n"


async def test_without_hold_writes_go_straight_through() -> None:
    raw = _Recording()
    edge = _EdgeTransport(raw, asyncio.get_running_loop())
    edge.write(b"a")
    edge.write(b"b")
    assert raw.writes == [b"a", b"b"]


async def test_closing_sends_what_is_held_before_the_eof() -> None:
    raw = _Recording()
    edge = _EdgeTransport(raw, asyncio.get_running_loop())
    edge.hold()
    edge.write(b"413 answer")
    edge.close()
    assert raw.writes == [b"413 answer"] and raw.events[:2] == ["write", "eof"]
    assert edge.lingering and edge.is_closing()
    await asyncio.sleep(0)
    assert raw.writes == [b"413 answer"], "the queued flush finds nothing left to send"
