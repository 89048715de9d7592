"""The floor of added latency at concurrency 1 on this machine: a proxy that does (almost) nothing.

The issue's c=1 target (added p50 <= 1 ms) is read against what the machine
itself costs for one extra hop. This starts bench/fake_upstream.py and a
minimal proxy (uvloop + httptools, one kept-alive upstream connection per
client connection, no JSON, no logging), pinned like bench/run.py pins the
gateway, and measures with bench/loadgen.py at concurrency 1, direct and
through the proxy. The proxy can also do, per request, the money path's two
SQLite transactions on a WAL file (one before the upstream call, one after it,
each an UPDATE and an INSERT, the second fsynced like Tollgate's settle), on
the loop thread or handed to a writer thread, to show what durable
bookkeeping alone adds.

    .venv/bin/python bench/c1_floor.py                     # every variant, ~1 minute
    .venv/bin/python bench/c1_floor.py --variants bare durable-thread --seconds 5 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import _cpu_seconds, _cpus, _free_port, _loadgen, _wait_port  # noqa: E402

VARIANTS = ("bare", "commit-loop", "durable-loop", "durable-thread")


class _Ledger:
    """Two transactions per request, shaped like a hold and a settle (no Tollgate code)."""

    def __init__(self, path: str, durable: bool) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS accounts(id TEXT PRIMARY KEY, balance INTEGER, held INTEGER)")
        self._db.execute("CREATE TABLE IF NOT EXISTS holds(request_id TEXT PRIMARY KEY, amount INTEGER, status TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS usage(request_id TEXT PRIMARY KEY, cost INTEGER)")
        self._db.execute("INSERT OR IGNORE INTO accounts VALUES ('a', 1000000000000, 0)")
        self._wal = os.open(path + "-wal", os.O_RDWR) if durable else None
        self._count = 0

    def hold(self) -> str:
        self._count += 1
        request_id = f"req_{os.urandom(8).hex()}"
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("UPDATE accounts SET held = held + 10 WHERE id = 'a' AND balance - held >= 10")
        self._db.execute("INSERT INTO holds VALUES (?, 10, 'open')", (request_id,))
        self._db.execute("COMMIT")
        return request_id

    def settle(self, request_id: str) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("UPDATE holds SET status = 'closed' WHERE request_id = ? AND status = 'open'", (request_id,))
        self._db.execute("UPDATE accounts SET held = held - 10, balance = balance - 7 WHERE id = 'a'")
        self._db.execute("INSERT INTO usage VALUES (?, 7)", (request_id,))
        self._db.execute("COMMIT")
        if self._wal is not None:
            os.fdatasync(self._wal)


class _Writer:
    """Runs ledger calls on one thread and resolves the caller's future on its loop (Tollgate's shape)."""

    def __init__(self) -> None:
        self._jobs: list = []
        self._ready = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def submit(self, fn, *args) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._ready:
            self._jobs.append((loop, future, fn, args))
            self._ready.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._jobs:
                    self._ready.wait()
                loop, future, fn, args = self._jobs.pop(0)
            result = fn(*args)
            loop.call_soon_threadsafe(future.set_result, result)


class _Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._waiter: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body, self._body = b"".join(self._body), []
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(body)

    async def call(self, request: bytes) -> bytes:
        self._waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(request)
        return await self._waiter


class _Client(asyncio.Protocol):
    def __init__(self, upstream_port: int, variant: str, ledger: _Ledger | None, writer: _Writer | None) -> None:
        import httptools

        self._parser = httptools.HttpRequestParser(self)
        self._upstream_port = upstream_port
        self._variant = variant
        self._ledger = ledger
        self._writer = writer
        self._body: list[bytes] = []
        self._upstream: _Upstream | None = None
        self._transport: asyncio.Transport | None = None
        self._url = b""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body, self._body = b"".join(self._body), []
        asyncio.get_running_loop().create_task(self._proxy(body))

    async def _ledger_call(self, fn, *args):
        if self._writer is not None:
            return await self._writer.submit(fn, *args)
        return fn(*args)

    async def _proxy(self, body: bytes) -> None:
        loop = asyncio.get_running_loop()
        if self._upstream is None:
            _, self._upstream = await loop.create_connection(_Upstream, "127.0.0.1", self._upstream_port)
        request_id = await self._ledger_call(self._ledger.hold) if self._ledger else ""
        request = (
            b"POST " + self._url + b" HTTP/1.1\r\nhost: upstream\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer sk-upstream\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        answer = await self._upstream.call(request)
        if self._ledger:
            await self._ledger_call(self._ledger.settle, request_id)
        assert self._transport is not None
        self._transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(answer)).encode() + b"\r\n\r\n" + answer
        )


def _serve(port: int, upstream_port: int, variant: str, db_path: str) -> None:
    import uvloop

    ledger = None if variant == "bare" else _Ledger(db_path, durable=variant.startswith("durable"))
    writer = _Writer() if variant.endswith("thread") else None

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Client(upstream_port, variant, ledger, writer), "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def _measure(variant: str, concurrency: int, seconds: float, upstream_port: int, gateway_cpus: set[int], other_cpus: set[int]) -> dict:
    port = _free_port()
    db_path = str(Path(tempfile.mkdtemp(prefix="tollgate-floor-")) / "floor.db")
    proxy = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), str(upstream_port), variant, db_path],
        preexec_fn=lambda: os.sched_setaffinity(0, gateway_cpus),
    )
    try:
        _wait_port(port, proxy)
        direct = _loadgen(upstream_port, "sk-direct", concurrency, False, seconds, 0.5, other_cpus)
        before = _cpu_seconds(proxy.pid)
        through = _loadgen(port, "sk-floor", concurrency, False, seconds, 0.5, other_cpus)
        cpu = _cpu_seconds(proxy.pid) - before
    finally:
        proxy.terminate()
        proxy.wait()
    # The CPU window includes loadgen's warm-up: count the requests of the whole window at the measured rate.
    requests = through["rps"] * (seconds + 0.5)
    return {
        "variant": variant,
        "rps": through["rps"],
        "added_p50_ms": through["p50_ms"] - direct["p50_ms"],
        "added_p99_ms": through["p99_ms"] - direct["p99_ms"],
        "cpu_ms_per_request": 1000 * cpu / requests if requests else 0.0,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _serve(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=1, help="closed-loop clients (the target is about 1)")
    parser.add_argument("--rounds", type=int, default=3, help="each variant this many times, interleaved; medians")
    args = parser.parse_args()
    gateway_cpus, other_cpus = _cpus()
    upstream_port = _free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(BENCH / "fake_upstream.py"), "--port", str(upstream_port)],
        preexec_fn=lambda: os.sched_setaffinity(0, other_cpus),
    )
    results: dict[str, list[dict]] = {variant: [] for variant in args.variants}
    try:
        _wait_port(upstream_port, upstream)
        for _ in range(args.rounds):
            for variant in args.variants:
                results[variant].append(_measure(variant, args.concurrency, args.seconds, upstream_port, gateway_cpus, other_cpus))
    finally:
        upstream.terminate()
        upstream.wait()
    print(f"Medians of {args.rounds} interleaved runs, concurrency {args.concurrency}, unary; proxy on CPU {sorted(gateway_cpus)}\n")
    print("| variant | req/s | added p50 ms | added p99 ms | CPU ms/req |")
    print("|---|---|---|---|---|")
    for variant, runs in results.items():
        med = {key: statistics.median(run[key] for run in runs) for key in ("rps", "added_p50_ms", "added_p99_ms", "cpu_ms_per_request")}
        print(f"| {variant} | {med['rps']:.0f} | {med['added_p50_ms']:.2f} | {med['added_p99_ms']:.2f} | {med['cpu_ms_per_request']:.2f} |")


if __name__ == "__main__":
    main()
