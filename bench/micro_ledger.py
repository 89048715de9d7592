"""CPU per hold+settle pair through the Ledger (the pipeline's path), on a durable SQLite file or PostgreSQL.

Each measurement runs in a fresh child process importing the gateway from a
source tree, so two trees (e.g. this branch and a `git archive` of main) are
compared in the same run, interleaved A B A B, and the median of the rounds is
printed. CPU is the child's process CPU (all threads: event loop and DB pool)
from getrusage, split into user and system time; wall time is shown but is
noise on a shared machine. On PostgreSQL only the gateway's CPU is counted
(the server's is its own process). Request ids are the measured tree's own
(gateway_core/request_ids.py new_request_id: random 128-bit hex today), so every
hold lands where the gateway's would in each index keyed by request id; `--sequential-ids` (r0, r1, ...: what
this benchmark used before round 6) appends them instead and understates that.

    .venv/bin/python bench/micro_ledger.py                       # this tree, SQLite
    .venv/bin/python bench/micro_ledger.py --compare /tmp/main   # A/B against another tree
    .venv/bin/python bench/micro_ledger.py --postgres            # also on a throwaway PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def _measure(url: str, concurrency: int, pairs: int, sequential_ids: bool) -> dict[str, float]:
    # Imported here: the child's sys.path decides which tree these come from.
    from gateway_core.metering.ledger import Ledger
    from gateway_core.metering.outcome import UsageOutcome, UsageStatus
    from gateway_core.request_ids import new_request_id
    from gateway_core.store.store import open_store

    store = await open_store(url)
    try:
        account = await store.create_account("bench")
        await store.top_up(account.id, 10**12, "bench-top-up")
        key, _ = await store.create_api_key(account.id, pepper="bench-pepper")
        ledger = Ledger(store.db, instance_id=f"bench-{os.getpid()}")
        await ledger.ensure_instance()
        outcome = UsageOutcome(
            model="m",
            provider="p",
            upstream_model="u",
            prompt_tokens=10,
            completion_tokens=16,
            cached_tokens=0,
            reasoning_tokens=0,
            cost_micros=12,
            status=UsageStatus.OK,
            latency_ms=3,
            time_to_first_token_ms=2,
            estimated=False,
        )
        counter = iter(range(10**9))

        def request_id() -> str:
            return f"r{next(counter)}" if sequential_ids else new_request_id()

        async def worker(count: int) -> None:
            for _ in range(count):
                hold = await ledger.hold(
                    request_id=request_id(),
                    account_id=account.id,
                    api_key_id=key.id,
                    amount_micros=100,
                    model="m",
                    provider="p",
                    upstream_model="u",
                )
                await ledger.settle(hold, outcome)

        await asyncio.gather(*(worker(50 // concurrency + 1) for _ in range(concurrency)))  # warm up
        per_worker = pairs // concurrency
        user0, sys0 = _cpu()
        wall0 = time.perf_counter()
        await asyncio.gather(*(worker(per_worker) for _ in range(concurrency)))
        wall1 = time.perf_counter()
        user1, sys1 = _cpu()
        done = per_worker * concurrency
        return {
            "user_us": 1e6 * (user1 - user0) / done,
            "sys_us": 1e6 * (sys1 - sys0) / done,
            "wall_us": 1e6 * (wall1 - wall0) / done,
        }
    finally:
        await store.close()


def _child(args: argparse.Namespace) -> None:
    sys.path.insert(0, args.tree)
    result = asyncio.run(_measure(args.url, args.concurrency, args.pairs, args.sequential_ids))
    print(json.dumps(result))


def _run_child(tree: str, url: str, concurrency: int, pairs: int, sequential_ids: bool) -> dict[str, float]:
    argv = [sys.executable, __file__, "--child", "--tree", tree, "--url", url]
    argv += ["--concurrency", str(concurrency), "--pairs", str(pairs)] + (["--sequential-ids"] if sequential_ids else [])
    out = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=tree).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _sqlite_url(tmp: str, name: str) -> str:
    return f"sqlite:///{tmp}/{name}.db"


def _compare(args: argparse.Namespace, make_url: Any, backend: str) -> None:
    trees = [("this", str(HERE))] + ([("compare", args.compare)] if args.compare else [])
    for concurrency in args.concurrency_levels:
        results: dict[str, list[dict[str, float]]] = {label: [] for label, _ in trees}
        for round_ in range(args.rounds):
            order = trees if round_ % 2 == 0 else list(reversed(trees))
            for label, tree in order:
                results[label].append(_run_child(tree, make_url(), concurrency, args.pairs, args.sequential_ids))
        for label, tree in trees:
            runs = results[label]
            user = statistics.median(r["user_us"] for r in runs)
            system = statistics.median(r["sys_us"] for r in runs)
            total = statistics.median(r["user_us"] + r["sys_us"] for r in runs)
            best = min(r["user_us"] + r["sys_us"] for r in runs)
            wall = statistics.median(r["wall_us"] for r in runs)
            print(
                f"{backend:10} conc {concurrency:3} {label:8} CPU/pair median {total:7.0f} us"
                f" (user {user:5.0f} + sys {system:5.0f}), best {best:6.0f} us, wall {wall:6.0f} us  [{tree}]"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", default=str(HERE), help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--compare", default="", help="another source tree to measure interleaved with this one")
    parser.add_argument("--pairs", type=int, default=2000, help="hold+settle pairs per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per tree and concurrency (median)")
    parser.add_argument("--concurrency-levels", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--sequential-ids", action="store_true", help="r0, r1, ... instead of random request ids")
    parser.add_argument("--postgres", action="store_true", help="also measure on a throwaway PostgreSQL server")
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        names = iter(range(10**6))
        _compare(args, lambda: _sqlite_url(tmp, f"ledger{next(names)}"), "sqlite")
    if args.postgres:
        sys.path.insert(0, str(HERE))
        from tests.postgres_support import start_postgres

        server = start_postgres()
        try:
            _compare(args, server.create_database, "postgresql")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
