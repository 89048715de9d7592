"""The shared upstream client notices a pooled connection the server closed, and does not reuse it.

The client learns of the close from the event loop (the connection's Protocol
gets eof_received / connection_lost), not by polling sockets: a real server
over real sockets shows the idle connection leaving the pool by itself.
"""

from __future__ import annotations

import asyncio

from gateway_core.providers.http import make_http_client
from gateway_core.providers.http_client import CallTimeouts

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
TIMEOUTS = CallTimeouts(connect=5.0, read=5.0, write=5.0, pool=5.0)


async def test_a_connection_closed_by_the_server_while_idle_is_replaced_not_reused() -> None:
    connections: list[asyncio.StreamWriter] = []
    closed = asyncio.Semaphore(0)  # released once per connection the server has closed

    async def answer_once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(RESPONSE)
        await writer.drain()
        await asyncio.sleep(0.1)  # idle in the client's pool by now
        writer.close()
        await writer.wait_closed()
        closed.release()

    server = await asyncio.start_server(answer_once_then_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = make_http_client()
    try:
        first = await client.post(f"http://127.0.0.1:{port}/a", b"", {}, TIMEOUTS)
        assert await first.read(100, truncate=False) == b"ok"
        assert client.idle_count == 1 and client.connection_count == 1  # open and quiet: kept
        await closed.acquire()
        await asyncio.sleep(0.05)  # the FIN has reached the client's socket
        assert client.idle_count == 0 and client.connection_count == 0  # the server closed it: gone
        second = await client.post(f"http://127.0.0.1:{port}/b", b"", {}, TIMEOUTS)
        assert await second.read(100, truncate=False) == b"ok"
        assert len(connections) == 2  # a fresh connection, not the closed one
        await asyncio.wait_for(closed.acquire(), 5.0)  # the second one's handler is over too
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_many_requests_on_one_kept_alive_connection_stay_on_it() -> None:
    connections = 0
    finished = asyncio.Event()

    async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(RESPONSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            await writer.wait_closed()
            finished.set()

    server = await asyncio.start_server(keep_answering, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = make_http_client()
    try:
        for index in range(20):
            response = await client.post(f"http://127.0.0.1:{port}/{index}", b"", {}, TIMEOUTS)
            assert await response.read(100, truncate=False) == b"ok"
        assert connections == 1  # the live connection went back to the pool and was reused every time
    finally:
        await client.aclose()
        await asyncio.wait_for(finished.wait(), 5.0)
        server.close()
        await server.wait_closed()
