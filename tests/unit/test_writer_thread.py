"""The SQLite writer thread (store/writer.py): grouping, hand-over, cancellation and stop.

The group runner here records what it was given instead of opening a
transaction: what is under test is how writes travel between the event loop
and the thread. The real transactions are covered by tests/unit/test_store.py
(one commit for writes queued together, a failing write rolled back alone) and
the ledger suites.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from gateway_core.store.writer import Outcome, Pending, WriterThread


class Recorder:
    """A group runner that calls each write with None and records the groups' kinds."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()

    def __call__(self, group: list[Pending]) -> list[Outcome]:
        self.running.set()
        self.gate.wait(10)
        self.groups.append([kind for _, _, kind in group])
        outcomes: list[Outcome] = []
        for fn, _, _ in group:
            try:
                outcomes.append((True, fn(None)))
            except Exception as exc:  # noqa: BLE001 - as Database does: handed to the caller
                outcomes.append((False, exc))
        return outcomes


def _writer(recorder: Recorder, max_group: int = 128) -> WriterThread:
    return WriterThread(recorder, max_group=max_group, name="test-writer", same_group=lambda a, b: a[0] == b[0])


async def test_writes_of_one_loop_iteration_run_as_one_group_and_each_caller_gets_its_own_outcome() -> None:
    recorder = Recorder()
    writer = _writer(recorder)

    def fail(_: Any) -> None:
        raise ValueError("this write only")

    futures = [writer.submit(lambda _, i=i: i, "lean") for i in range(3)] + [writer.submit(fail, "lean")]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[:3] == [0, 1, 2] and isinstance(results[3], ValueError)
    assert recorder.groups == [["lean"] * 4]
    await asyncio.to_thread(writer.stop)


async def test_kinds_that_may_not_share_a_transaction_run_in_order_in_separate_groups() -> None:
    recorder = Recorder()
    writer = _writer(recorder, max_group=2)
    kinds = ["lean-a", "lean-b", "session", "lean-a", "lean-a", "lean-a"]
    await asyncio.gather(*(writer.submit(lambda _, k=k: k, k) for k in kinds))
    # Same first letter may share; at most max_group per group; order kept.
    assert recorder.groups == [["lean-a", "lean-b"], ["session"], ["lean-a", "lean-a"], ["lean-a"]]
    await asyncio.to_thread(writer.stop)


async def test_writes_queued_while_a_group_runs_form_the_next_group() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    writer = _writer(recorder)
    first = writer.submit(lambda _: "first", "lean")
    await asyncio.to_thread(recorder.running.wait, 10)  # the first group is running, blocked on the gate
    later = [writer.submit(lambda _, i=i: i, "lean") for i in range(5)]
    await asyncio.sleep(0.05)  # handed over to the thread, queued behind the running group
    recorder.gate.set()
    assert await first == "first" and await asyncio.gather(*later) == [0, 1, 2, 3, 4]
    assert [len(group) for group in recorder.groups] == [1, 5]
    await asyncio.to_thread(writer.stop)


async def test_a_write_cancelled_before_it_started_never_runs() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    writer = _writer(recorder)
    ran: list[str] = []
    first = writer.submit(lambda _: ran.append("first"), "lean")
    await asyncio.to_thread(recorder.running.wait, 10)
    cancelled = writer.submit(lambda _: ran.append("cancelled"), "lean")
    kept = writer.submit(lambda _: ran.append("kept"), "lean")
    cancelled.cancel()
    await asyncio.sleep(0.05)
    recorder.gate.set()
    await first
    await kept
    assert ran == ["first", "kept"]
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await asyncio.to_thread(writer.stop)


async def test_stop_runs_what_was_handed_in_before_it() -> None:
    recorder = Recorder()
    writer = _writer(recorder)
    futures = [writer.submit(lambda _, i=i: i, "lean") for i in range(3)]  # not yet handed over
    await asyncio.to_thread(writer.stop)
    assert await asyncio.gather(*futures) == [0, 1, 2]
    assert recorder.groups == [["lean"] * 3]
