"""A log handler that writes whole lines in batches: one write per short interval, not one per line.

Every chat request logs two lines (the access line and routing's
`upstream_attempt` line); a StreamHandler pays a write syscall and a flush for
each, about a tenth of the event loop's CPU per request. BatchingHandler
formats each record at once (so a line shows the state at the time it was
logged) and appends it to a buffer; the first line of a batch schedules one
flush on the running event loop `interval_seconds` later, which writes the
whole batch with one `write`. So:

- a line is never split (the buffer holds whole formatted lines) and lines keep
  their order (one buffer, written in order, under the handler's lock);
- a line reaches the stream within `interval_seconds` while the loop runs,
  at once when logged from a thread without an event loop (start-up, shutdown,
  worker threads: the pending batch is written first, to keep the order), and
  at once when the batch reaches `max_lines`;
- `flush()` and `close()` write what is pending; logging.shutdown() calls both
  at interpreter exit, so a clean stop loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import IO

DEFAULT_INTERVAL_SECONDS = 0.05
DEFAULT_MAX_LINES = 512


class BatchingHandler(logging.Handler):
    """Buffers formatted lines and writes them to `stream()` in batches. Safe to share between threads."""

    def __init__(
        self,
        stream: Callable[[], IO[str]] = lambda: sys.stderr,
        *,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        max_lines: int = DEFAULT_MAX_LINES,
    ) -> None:
        super().__init__()
        self._stream = stream
        self._interval = interval_seconds
        self._max_lines = max_lines
        self._lines: list[str] = []
        # The loop a flush is scheduled on, if one is.
        self._scheduled_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle holds self.lock around emit: the buffer and the schedule change under it.
        try:
            line = self.format(record) + "\n"
        except Exception:  # noqa: BLE001 - logging's contract: report, never raise into the caller
            self.handleError(record)
            return
        self._append(line)

    def emit_line(self, line: str) -> None:
        """Adds one formatted line (without its newline) as emit() adds a record's: for callers that
        format without a LogRecord (json_lines). Takes the lock Handler.handle takes around emit()."""
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._append(line + "\n")

    def _append(self, line: str) -> None:
        """Buffers a line and schedules (or does) its write; the caller holds the lock."""
        self._lines.append(line)
        loop = _running_loop()
        if loop is None or len(self._lines) >= self._max_lines:
            self._write_pending()
            return
        scheduled = self._scheduled_on
        if scheduled is loop:
            return
        if scheduled is not None and scheduled.is_running() and not scheduled.is_closed():
            self._write_pending()  # another loop (another thread) owns the batch: do not wait for it
            return
        self._scheduled_on = loop
        loop.call_later(self._interval, self._flush_scheduled)

    def flush(self) -> None:
        """Writes every pending line now."""
        self.acquire()
        try:
            self._write_pending()
        finally:
            self.release()

    def close(self) -> None:
        self.flush()
        super().close()

    def _flush_scheduled(self) -> None:
        self.acquire()
        try:
            self._scheduled_on = None
            self._write_pending()
        finally:
            self.release()

    def _write_pending(self) -> None:
        """Writes the buffer in one call (caller holds the lock); the lines leave the buffer either way."""
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        try:
            stream = self._stream()
            stream.write(text)
            stream.flush()
        except Exception:  # noqa: BLE001 - as StreamHandler: a closed or broken stream is reported, not raised
            self.handleError(logging.makeLogRecord({"msg": "writing a batch of log lines failed"}))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
