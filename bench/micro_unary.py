"""Latency and CPU of a unary chat request at concurrency 1, through the real facade + core.

    .venv/bin/python bench/micro_unary.py                          # this tree, about 30 s
    .venv/bin/python bench/micro_unary.py --compare /tmp/base      # A/B against another source tree

At concurrency 1 every microsecond the event loop spends before the response's
bytes are written is latency; what it does after the write overlaps the
client's own work. This measures both sides of that line, per tree, with the
set-up of bench/micro_stream.py (a real `tollgate serve` per tree started from
its sources, SQLite file, JSON log lines, metrics; one fake OpenAI upstream in
its own process; raw keep-alive HTTP/1.1 from this process), rounds interleaved
between the trees (A B A B):

- p50 / p90 wall latency of one request as this client sees it, and the same
  for the upstream called directly (the difference is the gateway's added
  latency, as bench/run.py reports it);
- CPU per request of the event-loop thread and of the other threads (the
  SQLite writer), from /proc/<pid>/task/*/stat.

Median over rounds. Wall times on a shared box are noisy: compare trees within
one run, never across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from micro_stream import Gateway, _free_port, _one, _request, _thread_cpu, _wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


async def _latencies(port: int, request: bytes, count: int) -> list[float]:
    """Wall seconds of `count` requests one after another on one keep-alive connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    took = []
    clock = time.perf_counter
    try:
        for _ in range(count):
            began = clock()
            await _one(reader, writer, request, False)
            took.append(clock() - began)
    finally:
        writer.close()
    return took


def _direct_request(port: int) -> bytes:
    body = b'{"model":"bench-model","messages":[{"role":"user","content":"Say something short."}],"max_tokens":1024}'
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer sk-upstream-bench\r\ncontent-length: %d\r\n\r\n%s" % (port, len(body), body))


async def _measure(gateway: Gateway, count: int) -> tuple[float, float, float, float]:
    """(p50 s, p90 s, loop CPU us, other CPU us) per request over `count` requests."""
    request = _request(gateway.port, gateway.key, "unary")
    await _latencies(gateway.port, request, max(count // 10, 5))  # settle in
    await asyncio.sleep(0.05)
    main0, other0 = _thread_cpu(gateway.proc.pid)
    took = await _latencies(gateway.port, request, count)
    await asyncio.sleep(0.1)
    main1, other1 = _thread_cpu(gateway.proc.pid)
    deciles = statistics.quantiles(took, n=10)
    return (statistics.median(took), deciles[8], (main1 - main0) / count * 1e6, (other1 - other0) / count * 1e6)


async def _run(args: argparse.Namespace) -> None:
    trees = [ROOT] + [Path(t).resolve() for t in args.compare]
    upstream_port = _free_port()
    upstream = subprocess.Popen([sys.executable, str(Path(__file__).parent / "micro_stream.py"),
                                 "--upstream", str(upstream_port)])
    gateways: list[Gateway] = []
    rows: dict[int, list[tuple[float, float, float, float]]] = {}
    direct: list[float] = []
    try:
        _wait_port(upstream_port, upstream)  # type: ignore[arg-type]
        with tempfile.TemporaryDirectory(prefix="micro-unary-") as tmp:
            for number, tree in enumerate(trees):
                gateways.append(Gateway(tree, upstream_port, Path(tmp) / f"g{number}"))
            for gateway in gateways:
                await _measure(gateway, 100)  # warm-up
            for round_number in range(args.rounds):
                direct.append(statistics.median(await _latencies(upstream_port, _direct_request(upstream_port),
                                                                 args.requests)))
                for number, gateway in enumerate(gateways):
                    rows.setdefault(number, []).append(await _measure(gateway, args.requests))
                print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for gateway in gateways:
            gateway.stop()
        upstream.terminate()
        upstream.wait()
    base = statistics.median(direct)
    print(f"\nconcurrency 1, {args.requests} unary requests per round, median of {args.rounds} rounds; "
          f"direct upstream p50 {base * 1e6:.0f} us")
    for number, tree in enumerate(trees):
        values = rows[number]
        p50, p90, loop, other = (statistics.median(v[i] for v in values) for i in range(4))
        print(f"  {tree}\n    added p50 {(p50 - base) * 1e6:6.0f} us   p50 {p50 * 1e6:6.0f}   p90 {p90 * 1e6:6.0f}"
              f"   CPU loop {loop:5.0f} us   other {other:5.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", action="append", default=[], metavar="TREE",
                        help="another source tree to measure in the same run, interleaved")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=400)
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
