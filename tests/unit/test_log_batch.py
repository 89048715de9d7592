"""BatchingHandler: whole log lines, in order, written in batches and never lost at a clean stop."""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from gateway_core.observability.log_batch import BatchingHandler


class CountingStream(io.StringIO):
    """A stream that remembers each write call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def batched() -> Iterator[tuple[logging.Logger, CountingStream, BatchingHandler]]:
    stream = CountingStream()
    handler = BatchingHandler(lambda: stream, interval_seconds=0.05, max_lines=50)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("tollgate.test.batch")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, stream, handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        handler.close()


async def test_lines_logged_on_the_loop_are_written_together_soon_whole_and_in_order(batched) -> None:  # type: ignore[no-untyped-def]
    logger, stream, _ = batched
    for i in range(5):
        logger.info("line %d with some words", i)
    assert stream.getvalue() == "", "nothing is written per line"
    await asyncio.sleep(0.15)
    assert stream.getvalue() == "".join(f"line {i} with some words\n" for i in range(5))
    assert len(stream.writes) == 1, "one write for the batch"


async def test_a_line_from_a_thread_without_a_loop_is_written_at_once_after_the_pending_ones(batched) -> None:  # type: ignore[no-untyped-def]
    logger, stream, _ = batched
    logger.info("first, on the loop")
    worker = threading.Thread(target=logger.info, args=("second, from a worker thread",))
    worker.start()
    worker.join()
    assert stream.getvalue() == "first, on the loop\nsecond, from a worker thread\n"
    await asyncio.sleep(0.1)  # the scheduled flush finds nothing left: no duplicate
    assert stream.getvalue() == "first, on the loop\nsecond, from a worker thread\n"


async def test_a_full_batch_is_written_without_waiting(batched) -> None:  # type: ignore[no-untyped-def]
    logger, stream, _ = batched
    for i in range(50):
        logger.info("n%d", i)
    assert stream.getvalue().splitlines() == [f"n{i}" for i in range(50)]


async def test_flush_and_close_write_what_is_pending(batched) -> None:  # type: ignore[no-untyped-def]
    logger, stream, handler = batched
    logger.info("pending")
    handler.flush()
    assert stream.getvalue() == "pending\n"
    logger.info("at close")
    handler.close()
    assert stream.getvalue() == "pending\nat close\n"


def test_lines_are_formatted_when_logged_not_when_written(batched) -> None:  # type: ignore[no-untyped-def]
    logger, stream, _ = batched
    state = {"n": 1}

    async def log_then_change() -> None:
        logger.info("n=%s", dict(state))
        state["n"] = 2
        await asyncio.sleep(0.1)

    asyncio.run(log_then_change())
    assert stream.getvalue() == "n={'n': 1}\n"


def test_lines_written_from_a_finished_loop_reach_the_stream_with_the_next_line(batched) -> None:  # type: ignore[no-untyped-def]
    logger, stream, _ = batched

    async def log_and_leave() -> None:
        logger.info("from a loop that ends before its flush")

    asyncio.run(log_and_leave())
    logger.info("next, from no loop")
    assert stream.getvalue() == "from a loop that ends before its flush\nnext, from no loop\n"


_SERVER_LIKE = textwrap.dedent("""
    import asyncio, logging, sys, time
    from gateway_core.observability.log_format import configure_logging
    from gateway_core.observability.settings import LoggingSettings

    configure_logging(LoggingSettings(level="info", format="json"))
    log = logging.getLogger("tollgate.test")

    async def main() -> None:
        for i in range(300):
            log.info("request %d done", i, extra={"n": i})
        if sys.argv[1] == "linger":
            log.info("lingering, logged at %r", time.time())
            await asyncio.sleep(30)
        # "exit": the loop ends and the process exits at once, its batch still pending

    asyncio.run(main())
""")


def test_a_clean_exit_flushes_every_line_complete_and_in_order() -> None:
    done = subprocess.run([sys.executable, "-c", _SERVER_LIKE, "exit"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 300 and all(line.startswith("{") and line.endswith("}") for line in lines)
    assert [line.split('"n":')[1].rstrip("}") for line in lines] == [str(i) for i in range(300)]


def test_a_running_server_s_lines_reach_stderr_within_a_fraction_of_a_second() -> None:
    process = subprocess.Popen([sys.executable, "-c", _SERVER_LIKE, "linger"], stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 20
        seen = 0
        while seen < 301 and time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line.endswith("\n"), "whole lines only"
            seen += 1
        arrived = time.time()
        assert seen == 301 and "lingering, logged at" in line
        logged = float(line.split("logged at ")[1].split('"')[0])
        assert arrived - logged < 0.5, "the batch went out within a fraction of a second"
        assert process.poll() is None, "all lines arrived while the process still runs (not at its exit)"
    finally:
        process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()
