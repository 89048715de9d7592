"""The GC settings a server process applies once it has started."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway_core.runtime import GC_THRESHOLDS, settle_heap_after_start


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_start_up_objects_are_frozen_and_thresholds_raised(restored_gc: None) -> None:
    built_at_start = [object() for _ in range(10)]
    assert any(o is built_at_start for o in gc.get_objects())
    settle_heap_after_start()
    assert gc.get_freeze_count() > 0
    # Frozen: in the permanent generation, which no collection (and get_objects) walks.
    assert not any(o is built_at_start for o in gc.get_objects())
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # above CPython's default, or the change does nothing


def test_cycles_made_after_start_are_still_collected(restored_gc: None) -> None:
    settle_heap_after_start()

    class Node:
        partner: object = None

    a, b = Node(), Node()
    a.partner, b.partner = b, a
    del a, b
    assert gc.collect() >= 2
