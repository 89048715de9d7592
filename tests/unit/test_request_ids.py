"""Request ids from batched OS randomness: the format, uniqueness, randomness and fork safety."""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter

from gateway_core import request_ids

REQUEST_ID = re.compile(r"req_[0-9a-f]{32}")


def test_ids_have_the_request_id_format_and_never_repeat_across_many_batches() -> None:
    ids = [request_ids.new_request_id() for _ in range(20 * request_ids.BATCH + 7)]
    assert all(REQUEST_ID.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_every_hex_digit_is_random_not_a_counter() -> None:
    ids = [request_ids.random_hex() for _ in range(4000)]
    # A counter or fixed prefix would pin some positions; random digits spread over all 16 values.
    for position in (0, 15, 31):
        counts = Counter(i[position] for i in ids)
        assert len(counts) == 16 and max(counts.values()) < 4000 / 16 * 1.5
    # Consecutive ids share no more than chance allows (a counter's neighbours share ~28 digits).
    shared = [sum(a == b for a, b in zip(x, y)) for x, y in zip(ids, ids[1:])]
    assert sum(shared) / len(shared) < 4


def test_shorter_ids_are_hex_of_the_asked_length() -> None:
    lease = request_ids.random_hex(48)
    assert re.fullmatch(r"[0-9a-f]{12}", lease)
    assert len({request_ids.random_hex(48) for _ in range(1000)}) == 1000


def test_threads_drawing_at_once_never_get_the_same_id() -> None:
    results: list[list[str]] = [[] for _ in range(8)]

    def draw(out: list[str]) -> None:
        out.extend(request_ids.random_hex() for _ in range(3 * request_ids.BATCH))

    threads = [threading.Thread(target=draw, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [i for out in results for i in out]
    assert len(set(everything)) == len(everything) == 8 * 3 * request_ids.BATCH


def test_a_forked_child_does_not_reuse_the_parents_pending_ids() -> None:
    request_ids.random_hex()  # the parent now holds a partly used batch
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids, then leave at once
        os.close(read)
        os.write(write, "".join(request_ids.random_hex() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = "".join(request_ids.random_hex() for _ in range(10))
    child_ids = {child[i : i + 32] for i in range(0, len(child), 32)}
    parent_ids = {parent[i : i + 32] for i in range(0, len(parent), 32)}
    assert len(child_ids) == 10 and not child_ids & parent_ids


def test_request_ids_lead_with_the_time_in_milliseconds_then_80_random_bits() -> None:
    before = time.time_ns() // 1_000_000
    ids = [request_ids.new_request_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    stamps = [int(i[4:16], 16) for i in ids]
    assert all(before <= stamp <= after for stamp in stamps)
    # Made in time order, they sort in time order: inserts append to the money tables' primary-key indexes.
    assert stamps == sorted(stamps)
    tails = [i[16:] for i in ids]
    assert len(set(tails)) == len(tails)
    for position in (0, 10, 19):
        counts = Counter(t[position] for t in tails)
        assert len(counts) == 16 and max(counts.values()) < 2000 / 16 * 1.6
