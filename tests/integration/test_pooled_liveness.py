"""The shared upstream client notices a pooled connection the server closed, and does not reuse it.

The liveness check (gateway_core.providers.http._SocketCachingStream) is ours,
not httpcore's: a real server over real sockets shows it answers as httpcore's would.
"""

from __future__ import annotations

import asyncio

from gateway_core.providers.http import make_http_client

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


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
        first = await client.get(f"http://127.0.0.1:{port}/a")
        assert first.text == "ok"
        pooled = client._transport._pool.connections  # type: ignore[attr-defined]
        assert len(pooled) == 1 and pooled[0].is_idle()
        assert pooled[0].has_expired() is False  # open and quiet: not readable, kept
        await closed.acquire()
        await asyncio.sleep(0.05)  # the FIN has reached the client's socket
        assert pooled[0].has_expired() is True  # readable at EOF: the server closed it
        second = await client.get(f"http://127.0.0.1:{port}/b")
        assert second.text == "ok"
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
            assert (await client.get(f"http://127.0.0.1:{port}/{index}")).text == "ok"
        assert connections == 1  # the cached poll kept saying "not readable" on the live socket
    finally:
        await client.aclose()
        await asyncio.wait_for(finished.wait(), 5.0)
        server.close()
        await server.wait_closed()
