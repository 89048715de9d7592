"""A raw OpenAI-compatible upstream that writes exactly the bytes a test gives, in the writes it chooses.

For what the scripted fakes cannot show: an event stream arriving in one
network read (a burst, as a fast model's tokens do) or in parts with pauses
between them. The bytes are OpenAI's own framing: HTTP/1.1, chunked, one SSE
`data:` event per HTTP chunk, `[DONE]` last.
"""

from __future__ import annotations

import asyncio

_PREFIX = b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-x",'
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
FIRST = _PREFIX + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}'
FINISH = _PREFIX + b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
USAGE = _PREFIX + b'"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}'
ERROR = b'{"error":{"message":"overloaded","type":"server_error","code":null}}'
END = b"0\r\n\r\n"


def token(text: str, *, fingerprint: str | None = None, index: int = 0) -> bytes:
    """A text-only delta of choice `index`, with a system_fingerprint if one is given."""
    mark = b'"system_fingerprint":"%s",' % fingerprint.encode() if fingerprint is not None else b""
    return (_PREFIX + mark + b'"choices":[{"index":%d,"delta":{"content":"' % index + text.encode()
            + b'"},"finish_reason":null}]}')


def event(data: bytes) -> bytes:
    """One SSE event as one HTTP chunk."""
    body = b"data: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(body), body)


class RawUpstream:
    """Answers every request on a connection with the next script: a list of (pause seconds, bytes) writes."""

    def __init__(self, *scripts: list[tuple[float, bytes]]) -> None:
        self._scripts = list(scripts)
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self._scripts:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                for pause, data in self._scripts.pop(0):
                    await asyncio.sleep(pause)
                    writer.write(data)
                    await writer.drain()
            await reader.read()  # until the client closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
