"""Ids for requests and leases, their random digits cut from one OS random read per batch.

`uuid.uuid4().hex` and `secrets.token_hex` make one `os.urandom` call (a
getrandom syscall) per id; on the request path that was several percent of
the event loop's CPU. Here one read yields BATCH random ids of 128 bits,
straight from the OS CSPRNG, never reused and never derived from a counter.

A request id is "req_", the time in milliseconds since the epoch (12 hex
digits, as UUIDv7 and ULID lead with it), then 80 of those random bits. It
is the primary key of holds and usage records and part of the ledger's
(kind, request_id) index: random keys put every insert on another B-tree
page, so in a grown database each request dirties (and writes to the WAL)
pages all over three indexes, while keys in time order append at their
right edge. What still holds:

- unique across processes and replicas with overwhelming probability (80
  random bits within one millisecond);
- unpredictable: knowing earlier ids (clients see theirs in x-request-id) says
  nothing about the next ones' random bits, so nobody can claim another
  request's id first; the id gives away only when its request started;
- fork-safe: a child process drops the parent's unused bytes (os.register_at_fork),
  so parent and child never hand out the same random bits.

Thread-safe without a lock: taking the next slice is a single list.pop(), atomic
in CPython; two threads refilling at once each add fresh random ids.
"""

from __future__ import annotations

import os
import time

BATCH = 256
_pool: list[str] = []


def random_hex(bits: int = 128) -> str:
    """A fresh random id of `bits` bits (a multiple of 4, at most 128) as lower-case hex."""
    if bits != 128:
        return random_hex()[: bits // 4]
    try:
        return _pool.pop()
    except IndexError:
        _refill()
        return random_hex()


def new_request_id() -> str:
    """"req_" and 32 hex digits: 12 of the time in milliseconds, then 20 random (80 bits)."""
    return f"req_{time.time_ns() // 1_000_000:012x}{random_hex()[:20]}"


def _refill() -> None:
    text = os.urandom(16 * BATCH).hex()
    _pool.extend(text[i : i + 32] for i in range(0, len(text), 32))


def _forget_after_fork() -> None:
    _pool.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
