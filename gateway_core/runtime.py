"""Process-wide runtime settings for a long-running server process.

The garbage collector: a request allocates a few thousand short-lived
containers (protobuf wrappers, dicts, coroutines), so with CPython's default
thresholds (700, 10, 10) a busy gateway runs a young collection every request
or two and, every few seconds, a full collection that walks every object the
process ever imported: ~70 ms each on this codebase, ~5 % of all CPU under
load (measured with gc.callbacks during bench/run.py). After start-up, the
objects that exist are modules, classes, config and compiled statements that
live as long as the process; ``gc.freeze()`` moves them to a permanent
generation the collector never scans again, and higher thresholds let
short-lived objects die by reference counting before a collection sees them.
Cycles are still collected: only how often the collector looks changes.
"""

from __future__ import annotations

import gc

# Young-generation allocations between collections, then how many young
# (resp. middle) collections before the next older one.
GC_THRESHOLDS = (20_000, 20, 20)


def settle_heap_after_start() -> None:
    """Call once the server has started: freezes what start-up built, then raises the GC thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
