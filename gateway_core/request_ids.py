"""Random hex ids for requests and leases, cut from one OS random read per batch.

`uuid.uuid4().hex` and `secrets.token_hex` make one `os.urandom` call (a
getrandom syscall) per id; on the request path that was several percent of
the event loop's CPU. Here one read yields BATCH ids. Each id is still 128
(or the asked-for number of) bits straight from the OS CSPRNG, never reused
and never derived from a counter, so everything uuid4 guaranteed still holds:

- unique across processes and replicas with overwhelming probability (ids are
  primary keys of holds in a shared database: 128 random bits, like uuid4's
  122, make a collision astronomically unlikely);
- unpredictable: knowing earlier ids (clients see theirs in x-request-id) says
  nothing about the next ones, so nobody can claim another request's id first;
- fork-safe: a child process drops the parent's unused bytes (os.register_at_fork),
  so parent and child never hand out the same id.

Thread-safe without a lock: taking the next slice is a single list.pop(), atomic
in CPython; two threads refilling at once each add fresh random ids.
"""

from __future__ import annotations

import os

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
    """"req_" and 32 hex digits: the format of the gateway's request ids."""
    return "req_" + random_hex()


def _refill() -> None:
    text = os.urandom(16 * BATCH).hex()
    _pool.extend(text[i : i + 32] for i in range(0, len(text), 32))


def _forget_after_fork() -> None:
    _pool.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
