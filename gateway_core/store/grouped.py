"""Writes that a SQLite group commit can run together: one set of statements for many callers.

A group commit (store/db.py) runs every queued write in one transaction. Run
one by one, N holds cost N times the same four statements; most of a short
statement's cost is fixed (the driver's call, binding, the VDBE's start), so
the same rows written by one multi-row statement, and one UPDATE per account
with the summed amounts, cost about half (bench/micro_writer.py). A
GroupedWrite is still an ordinary lean write (call it with a LeanConnection:
PostgreSQL and a lone write take that path); its class also knows how to run
many of its kind at once.

Every write of a group was submitted concurrently and none of its callers has
heard back yet, so any order among them is a valid serial order: each class's
writes run together, ahead of the group's other writes, in the order of
``run_order`` (settlements first: they only ever free money, so holds after
them see the most room).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from gateway_core.store.lean import LeanConnection

# What a write came to (store/writer.py's Outcome): (True, its result) or (False, its exception).
Outcome = tuple[bool, Any]

_SAVEPOINT = "SAVEPOINT tollgate_together"
_ROLLBACK = "ROLLBACK TO tollgate_together"
_RELEASE = "RELEASE tollgate_together"


class GroupedWrite:
    """A lean write that can also run together with others of its class.

    Subclasses implement __call__ (the write alone) and run_together (many at
    once, all or nothing). Instances are immutable descriptions of the write.
    """

    __slots__ = ()

    # Classes run in ascending order within a group.
    run_order: ClassVar[int] = 0
    # Fewer writes of the class than this in a group run one by one: below it, setting up the
    # statements together (and the savepoint) costs more than the statements it saves (callgrind,
    # holds+settles, instructions per pair: 2 together 644k vs one by one 649k before the savepoint;
    # 4: 538k vs 598k; 16: 455k).
    least_together: ClassVar[int] = 3

    def __call__(self, lean: LeanConnection) -> Any:
        raise NotImplementedError

    @classmethod
    def run_together(cls, lean: LeanConnection, writes: Sequence[Any]) -> list[Outcome | None] | None:
        """Runs writes (all of this class) as one; per write its outcome, or None to run it alone afterwards.

        Returns None (or raises) when they cannot all go through together
        (a refusal, a clash): the caller then undoes whatever this wrote and
        runs every one of them alone, so each refusal is its own caller's.
        """
        raise NotImplementedError


def run_grouped(lean: LeanConnection, fns: Sequence[Any], outcomes: list[Outcome | None]) -> list[int]:
    """Runs together the GroupedWrites of fns (two or more of a class), filling outcomes by position.

    Each class's attempt is wrapped in a SAVEPOINT, rolled back whole if it
    cannot go through. Returns the positions still to run one by one (in order).
    """
    by_class: dict[type[GroupedWrite], list[int]] = {}
    alone: list[int] = []
    for position, fn in enumerate(fns):
        if isinstance(fn, GroupedWrite):
            by_class.setdefault(type(fn), []).append(position)
        else:
            alone.append(position)
    for cls in sorted(by_class, key=lambda found: found.run_order):
        positions = by_class[cls]
        if len(positions) < max(cls.least_together, 2):  # the ordinary path: no savepoint to pay for
            alone.extend(positions)
            continue
        lean.run_sql(_SAVEPOINT)
        try:
            results = cls.run_together(lean, [fns[position] for position in positions])
        except Exception:  # noqa: BLE001 - each write, run alone below, meets its own error again
            results = None
        if results is None:
            lean.run_sql(_ROLLBACK)
            lean.run_sql(_RELEASE)
            alone.extend(positions)
            continue
        lean.run_sql(_RELEASE)
        for position, result in zip(positions, results, strict=True):
            if result is None:
                alone.append(position)
            else:
                outcomes[position] = result
    alone.sort()
    return alone
