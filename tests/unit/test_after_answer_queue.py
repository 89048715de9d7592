"""after_answer: deferred observation runs exactly once, in order, and never raises into its caller."""

from __future__ import annotations

import contextvars
import logging

import pytest

from gateway_core.observability import after_answer
from gateway_core.observability.after_answer import AfterAnswer


def test_without_a_call_that_defers_work_runs_at_once() -> None:
    ran: list[int] = []
    after_answer.after_answer(ran.append, 1)
    assert ran == [1]


def test_inside_a_call_work_waits_for_run_and_runs_once_in_order() -> None:
    ran: list[str] = []

    def call() -> AfterAnswer:
        deferred, token = after_answer.open_for_call()
        after_answer.after_answer(ran.append, "line")
        after_answer.after_answer(ran.append, "count")
        after_answer.close_for_call(token)
        return deferred

    deferred = contextvars.copy_context().run(call)
    assert ran == []
    assert deferred.close()
    deferred.run()
    deferred.run()  # a second run finds nothing: each piece of work runs once
    assert ran == ["line", "count"]


def test_work_queued_after_close_or_by_running_work_runs_at_once() -> None:
    ran: list[str] = []
    deferred = AfterAnswer()
    assert deferred.add(lambda: after_answer.after_answer(ran.append, "nested"), ())
    assert deferred.close()  # something is queued
    assert not deferred.add(ran.append, ("late",))  # closed: the caller runs it itself
    deferred.run()
    assert ran == ["nested"]


def test_a_call_with_nothing_deferred_says_so() -> None:
    assert AfterAnswer().close() is False


def test_a_failing_piece_is_logged_and_the_rest_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("observation broke")

    deferred = AfterAnswer()
    deferred.add(broken, ())
    deferred.add(ran.append, ("after",))
    with caplog.at_level(logging.ERROR, logger="tollgate.observability"):
        deferred.run()
    assert ran == ["after"]
    [record] = [r for r in caplog.records if r.name == "tollgate.observability"]
    assert "broken" in record.getMessage() and record.exc_info is not None


def test_a_failure_of_work_run_at_once_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="tollgate.observability"):
        after_answer.after_answer(int, "not a number")
    assert any(r.name == "tollgate.observability" and r.exc_info for r in caplog.records)
