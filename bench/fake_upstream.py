"""A fast fake OpenAI-style upstream for the benchmark: raw asyncio, HTTP/1.1 keep-alive.

POST */chat/completions answers a canned chat.completion, or (when the body
asks for "stream": true) 16 content chunks, a finish chunk and a usage chunk
as SSE, with an optional delay between chunks; an upstream model named
"chunks-N" streams N content chunks instead (bench/scaling.py). It parses just enough HTTP to
serve a keep-alive client (Content-Length bodies only), so it costs little CPU
and is never the bottleneck.

    python bench/fake_upstream.py --port 9100 [--token-delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import re

CHUNKS = 16
_COMPLETION = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"' + b"tok " * CHUNKS + b'"},'
    b'"finish_reason":"stop","logprobs":null}],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":16,"total_tokens":28}}'
)
_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
_UNARY = _HEAD % len(_COMPLETION) + _COMPLETION
_STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
_PREFIX = b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-model",'


def _chunk(data: bytes) -> bytes:
    event = b"data: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


_FIRST = _chunk(_PREFIX + b'"choices":[{"index":0,"delta":{"role":"assistant","content":"tok "},"finish_reason":null}]}')
_TOKEN = _chunk(_PREFIX + b'"choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}')
_TAIL = (
    _chunk(_PREFIX + b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}')
    + _chunk(_PREFIX + b'"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":16,"total_tokens":28}}')
    + _chunk(b"[DONE]")
    + b"0\r\n\r\n"
)
_STREAM_ALL = _STREAM_HEAD + _FIRST + _TOKEN * (CHUNKS - 1) + _TAIL
_CHUNKS_MODEL = re.compile(rb'"model":"chunks-(\d+)"')


def _stream_of(chunks: int) -> bytes:
    usage = b'"usage":{"prompt_tokens":12,"completion_tokens":%d,"total_tokens":%d}}' % (chunks, chunks + 12)
    tail = (
        _chunk(_PREFIX + b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}')
        + _chunk(_PREFIX + b'"choices":[],' + usage)
        + _chunk(b"[DONE]")
        + b"0\r\n\r\n"
    )
    return _STREAM_HEAD + _FIRST + _TOKEN * (chunks - 1) + tail


class _Upstream(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            body = self._buffer[end + 4 : total]
            self._buffer = self._buffer[total:]
            compact = body.replace(b" ", b"")
            sized = _CHUNKS_MODEL.search(compact)
            self._answer(b'"stream":true' in compact, int(sized.group(1)) if sized else None)

    def _answer(self, stream: bool, chunks: int | None = None) -> None:
        assert self._transport is not None
        if not stream:
            self._transport.write(_UNARY)
        elif chunks is not None:
            self._transport.write(_stream_of(chunks))
        elif self._delay <= 0:
            self._transport.write(_STREAM_ALL)
        else:
            asyncio.ensure_future(self._slow_stream(self._transport))

    async def _slow_stream(self, transport: asyncio.Transport) -> None:
        transport.write(_STREAM_HEAD + _FIRST)
        for _ in range(CHUNKS - 1):
            await asyncio.sleep(self._delay)
            transport.write(_TOKEN)
        transport.write(_TAIL)


async def serve(port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Upstream(delay), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.port, args.token_delay_ms / 1000))


if __name__ == "__main__":
    main()
