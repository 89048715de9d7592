"""Paired A/B of unary requests: two source trees' gateways loaded at the same time, so both see the same machine.

    .venv/bin/python bench/micro_paired.py /tmp/base              # this tree against /tmp/base, both modes
    .venv/bin/python bench/micro_paired.py /tmp/base --mode c1 --rounds 10

On a shared, noisy machine, runs of A and B taken in turns (even interleaved
round by round) still see different load; here they never run apart:
- c16: both gateways get 16 concurrent keep-alive connections at the same time;
- c1: one connection each, requests alternating A, B, A, B, ... (one at a time).
Each is a real `tollgate serve` from its tree (bench/micro_stream.py's Gateway:
SQLite file, JSON log lines, metrics) against one fake OpenAI upstream. Reported
per tree: CPU microseconds per request of the event-loop thread and of the other
threads (/proc/<pid>/task/*/stat), median over rounds, and at c1 the median
latency the client saw (upstream included). Compare the two trees within one run.
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

from micro_stream import Gateway, _free_port, _load, _one, _request, _thread_cpu, _wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


async def _alternate(gateways: list[Gateway], count: int) -> list[list[float]]:
    """count requests per gateway, one at a time, alternating; the latency of each."""
    connections = []
    for gateway in gateways:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        connections.append((reader, writer, _request(gateway.port, gateway.key, "unary")))
    took: list[list[float]] = [[] for _ in gateways]
    try:
        for _ in range(count):
            for index, (reader, writer, request) in enumerate(connections):
                began = time.perf_counter()
                await _one(reader, writer, request, False)
                took[index].append(time.perf_counter() - began)
    finally:
        for _, writer, _ in connections:
            writer.close()
    return took


async def _mode(gateways: list[Gateway], mode: str, rounds: int, count: int) -> None:
    cpu: list[list[tuple[float, float]]] = [[] for _ in gateways]
    latency: list[list[float]] = [[] for _ in gateways]
    for _ in range(rounds):
        before = [_thread_cpu(g.proc.pid) for g in gateways]
        if mode == "c16":
            await asyncio.gather(*(_load(g.port, g.key, "unary", count, 16) for g in gateways))
        else:
            for index, took in enumerate(await _alternate(gateways, count)):
                latency[index].append(statistics.median(took))
        await asyncio.sleep(0.15)  # the last settlements land inside the window
        after = [_thread_cpu(g.proc.pid) for g in gateways]
        for index in range(len(gateways)):
            cpu[index].append(((after[index][0] - before[index][0]) / count * 1e6,
                               (after[index][1] - before[index][1]) / count * 1e6))
    print(f"{mode}: {count} unary requests per tree and round, median of {rounds} rounds")
    for index, gateway in enumerate(gateways):
        loop = statistics.median(c[0] for c in cpu[index])
        other = statistics.median(c[1] for c in cpu[index])
        seen = f"   client p50 {statistics.median(latency[index]) * 1e6:6.0f} us" if latency[index] else ""
        print(f"  {gateway.tree}\n    CPU loop {loop:6.0f} us   other {other:6.0f} us{seen}")


async def _run(args: argparse.Namespace) -> None:
    trees = [ROOT, Path(args.other).resolve()]
    upstream_port = _free_port()
    upstream = subprocess.Popen([sys.executable, str(Path(__file__).parent / "micro_stream.py"),
                                 "--upstream", str(upstream_port)])
    gateways: list[Gateway] = []
    try:
        _wait_port(upstream_port, upstream)  # type: ignore[arg-type]
        with tempfile.TemporaryDirectory(prefix="micro-paired-") as tmp:
            for number, tree in enumerate(trees):
                gateways.append(Gateway(tree, upstream_port, Path(tmp) / f"g{number}"))
            for gateway in gateways:
                await _load(gateway.port, gateway.key, "unary", 200, 16)  # warm-up
            for mode in (("c1", "c16") if args.mode == "both" else (args.mode,)):
                await _mode(gateways, mode, args.rounds, args.requests if mode == "c16" else args.requests // 4)
    finally:
        for gateway in gateways:
            gateway.stop()
        upstream.terminate()
        upstream.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("other", help="the other source tree (e.g. a git archive of main)")
    parser.add_argument("--mode", choices=("c1", "c16", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1600, help="per round at c16 (a quarter of it at c1)")
    import uvloop

    uvloop.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
