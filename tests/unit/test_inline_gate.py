"""When a write may run inline (store/inline.py InlineGate): runs of inline writes and the pause after slow ones."""

from __future__ import annotations

import sqlite3
import time

from sqlalchemy.exc import OperationalError

from gateway_core.store.inline import InlineGate, is_busy


def test_a_run_of_inline_writes_ends_until_the_thread_runs_a_group() -> None:
    gate = InlineGate(max_run=3)
    for _ in range(3):
        assert gate.is_open()
        gate.ran_inline(0.0001)
    assert not gate.is_open()
    gate.ran_on_thread()
    assert gate.is_open()


def test_one_slow_write_does_not_close_the_gate_but_writes_slow_on_average_do() -> None:
    gate = InlineGate(slow_seconds=0.003, pause_seconds=0.05)
    for _ in range(20):
        gate.ran_inline(0.0002)
    gate.ran_inline(0.010)  # the scheduler, once
    assert gate.is_open()
    for _ in range(20):
        gate.ran_inline(0.0002)
    gate.ran_inline(0.030)  # a stalled fsync
    assert not gate.is_open()
    time.sleep(0.06)
    assert gate.is_open()  # tried again after the pause, from a clean slate
    gate.ran_inline(0.0002)
    assert gate.is_open()
    for _ in range(10):  # a disk slow on every write closes it again
        gate.ran_inline(0.005)
    assert not gate.is_open()


def test_busy_is_sqlite_busy_raw_or_wrapped_and_nothing_else() -> None:
    raw_busy = sqlite3.OperationalError("database is locked")
    raw_busy.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
    assert is_busy(raw_busy)
    assert is_busy(OperationalError("BEGIN IMMEDIATE", None, raw_busy))
    io_error = sqlite3.OperationalError("disk I/O error")
    io_error.sqlite_errorcode = sqlite3.SQLITE_IOERR  # type: ignore[attr-defined]
    assert not is_busy(io_error) and not is_busy(OSError("fsync")) and not is_busy(sqlite3.OperationalError("no code"))
