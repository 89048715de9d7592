"""UpstreamDrain: the drain slot, the cut's timing, and undoing a cut that fired."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from gateway_core.chat.upstream_drain import UpstreamDrain


class _Pipeline:
    """The three things UpstreamDrain reads of ChatPipeline."""

    def __init__(self, max_drains: int, drain_seconds: float) -> None:
        self._drains = 0
        self._max = max_drains
        self._metering = SimpleNamespace(drain_seconds=drain_seconds)

    def _may_drain(self) -> bool:
        return self._drains < self._max


def _recording_cut(calls: list[float]) -> Callable[[], bool]:
    """A cut that records when it was called and says it cancelled."""

    def cut() -> bool:
        calls.append(asyncio.get_running_loop().time())
        return True

    return cut


async def test_a_free_slot_drains_for_drain_seconds_then_cuts_and_the_slot_comes_back_once() -> None:
    pipeline = _Pipeline(max_drains=1, drain_seconds=0.05)
    cuts: list[float] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    drain = UpstreamDrain(pipeline, _recording_cut(cuts))
    assert pipeline._drains == 1 and not pipeline._may_drain()
    await asyncio.sleep(0.01)
    assert not cuts  # still draining
    await asyncio.sleep(0.1)
    assert cuts and cuts[0] - started >= 0.04 and drain.fired
    drain.release()
    drain.release()
    assert pipeline._drains == 0


async def test_no_free_slot_cuts_at_once_and_takes_no_slot() -> None:
    pipeline = _Pipeline(max_drains=0, drain_seconds=30.0)
    cuts: list[float] = []
    drain = UpstreamDrain(pipeline, _recording_cut(cuts))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert cuts and drain.fired  # on the next pass of the loop
    drain.release()
    assert pipeline._drains == 0


async def test_a_cut_that_did_not_cancel_is_not_fired_and_undoes_nothing() -> None:
    pipeline = _Pipeline(max_drains=0, drain_seconds=0.0)
    drain = UpstreamDrain(pipeline, lambda: False)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not drain.fired


async def test_the_upstream_ending_first_stops_the_cut() -> None:
    pipeline = _Pipeline(max_drains=1, drain_seconds=0.02)
    cuts: list[float] = []
    drain = UpstreamDrain(pipeline, _recording_cut(cuts))
    drain.end_upstream(asyncio.current_task())
    await asyncio.sleep(0.06)
    assert cuts == [] and not drain.fired


async def test_a_cut_that_fired_is_undone_from_the_tasks_cancellation_count() -> None:
    pipeline = _Pipeline(max_drains=1, drain_seconds=0.01)
    outcome: dict[str, Any] = {}

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None

        def cut() -> bool:
            task.cancel()
            return True

        drain = UpstreamDrain(pipeline, cut)
        try:
            await asyncio.sleep(10)  # the upstream call, ended by the cut
        except asyncio.CancelledError:
            outcome["cancelling before"] = task.cancelling()
        drain.end_upstream(task)
        outcome["cancelling after"] = task.cancelling()
        await asyncio.sleep(0)  # the settlement's awaits run as in a plain task
        drain.release()
        outcome["settled"] = True

    await asyncio.wait_for(asyncio.create_task(run()), 2.0)
    assert outcome == {"cancelling before": 1, "cancelling after": 0, "settled": True}
    assert pipeline._drains == 0
