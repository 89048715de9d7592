"""An upstream's response as providers see it: status, headers, the body as bytes, close.

The body is read straight off the pooled connection: an async iterator of
byte chunks (each what arrived since the last read, so a lagging consumer gets
bigger chunks, and past a buffer limit the socket stops being read), or
`read` with a cap. Reading to the end hands the connection back to the pool
at once; closing before the end closes the connection instead, which is how
an upstream learns to stop generating.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping

from gateway_core.providers.http_connection import Connection
from gateway_core.providers.http_errors import ProtocolViolation

# How much one compressed chunk may inflate to per step (a bomb is cut in steps, and capped by read's limit).
_INFLATE_STEP = 1024 * 1024


class ResponseHeaders(Mapping[str, str]):
    """Response headers, looked up case-insensitively; repeated fields are joined with ", ".

    Decoded on first use: a successful unary answer is often read without a look at them.
    """

    __slots__ = ("_raw", "_decoded")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._decoded: dict[str, str] | None = None

    @property
    def _fields(self) -> dict[str, str]:
        fields = self._decoded
        if fields is None:
            fields = self._decoded = {}
            for name, value in self._raw:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                fields[key] = f"{fields[key]}, {text}" if key in fields else text
        return fields

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:  # values may carry upstream ids and cookies: names only
        return f"ResponseHeaders({sorted(self._fields)})"


class _Inflater:
    """gzip or deflate (zlib-wrapped or raw, as httpx accepts) content decoding, bounded per step."""

    def __init__(self, encoding: str) -> None:
        self._raw_fallback = encoding == "deflate"
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
        self._first = True

    def inflate(self, data: bytes, limit: int) -> bytes:
        """Up to limit bytes of output for data (the rest waits in unconsumed_tail)."""
        try:
            out = self._zlib.decompress(data, limit)
        except zlib.error:
            if not (self._first and self._raw_fallback):
                raise ProtocolViolation("upstream sent a corrupt compressed body") from None
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._zlib.decompress(data, limit)
        self._first = False
        return out

    @property
    def tail(self) -> bytes:
        """Input not yet inflated because of the limit."""
        return self._zlib.unconsumed_tail

    def finish(self) -> bytes:
        """Whatever output zlib still holds at the end of the body."""
        try:
            return self._zlib.flush()
        except zlib.error:
            raise ProtocolViolation("upstream sent a corrupt compressed body") from None


def _inflater_for(content_encoding: bytes) -> _Inflater | None:
    if not content_encoding:
        return None
    encoding = content_encoding.decode("latin-1").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _Inflater("gzip" if encoding == "x-gzip" else encoding)
    raise ProtocolViolation("upstream used a content encoding that was not asked for")


class UpstreamResponse:
    """One upstream response; its body is an async iterator of bytes. Not thread-safe.

    Always `aclose()` it (providers push it onto their exit stack); after the
    last chunk has been read that is free.
    """

    __slots__ = ("status", "headers", "content_type", "_connection", "_release", "_done", "_inflater")

    def __init__(self, connection: Connection, release: Callable[[Connection], None]) -> None:
        self.status = connection.status
        self.headers = ResponseHeaders(connection.raw_headers())
        # The first Content-Type value as received (raw bytes): a stream checks it without decoding every header.
        self.content_type: bytes = connection.content_type
        self._connection: Connection | None = connection
        self._release = release
        self._done = False
        self._inflater: _Inflater | None = None
        if connection.content_encoding:
            try:
                self._inflater = _inflater_for(connection.content_encoding)
            except ProtocolViolation:
                self.aclose_now()
                raise

    @property
    def fully_received(self) -> bool:
        """Every byte of the body has arrived (or the response is closed): reading never waits."""
        return self._connection is None or self._connection.complete

    @property
    def is_success(self) -> bool:
        """A 2xx status."""
        return 200 <= self.status < 300

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.next_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def next_chunk(self, limit: int = _INFLATE_STEP) -> bytes | None:
        """The next piece of the (decoded) body, or None at its end (the connection is then released)."""
        inflater = self._inflater
        if inflater is not None and inflater.tail:
            return inflater.inflate(inflater.tail, limit)
        connection = self._connection
        while connection is not None:
            try:
                data = await connection.read_chunk()
            except BaseException:
                self.aclose_now()
                raise
            if data is None:
                rest = inflater.finish() if inflater is not None else b""
                self._finish()
                return rest or None
            if inflater is None:
                return data
            try:
                data = inflater.inflate(data, limit)
            except ProtocolViolation:
                self.aclose_now()
                raise
            if data:
                return data
        return None

    async def read(self, limit: int, *, truncate: bool) -> bytes | None:
        """The whole body if it is at most limit bytes; else its first limit bytes (truncate)
        or None (the connection is closed, the rest never read)."""
        parts: list[bytes] = []
        size = 0
        while (part := await self.next_chunk(limit - size + 1)) is not None:
            size += len(part)
            if size > limit:
                if truncate:
                    parts.append(part[: limit - (size - len(part))])
                    self.aclose_now()
                    return b"".join(parts)
                self.aclose_now()
                return None
            parts.append(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def aclose(self) -> None:
        """Ends the response: the connection goes back to the pool if the body was read
        to the end, and is closed otherwise."""
        self.aclose_now()

    def aclose_now(self) -> None:
        """aclose without awaiting (for synchronous clean-up paths)."""
        connection = self._connection
        if connection is None:
            return
        self._connection = None
        if not self._done:
            connection.close()
        self._release(connection)

    def _finish(self) -> None:
        self._done = True
        self.aclose_now()

    def __repr__(self) -> str:
        return f"<UpstreamResponse status={self.status}>"
