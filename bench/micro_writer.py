"""CPU of the SQLite writer thread alone per hold+settle pair, and (--statements) of each money statement.

bench/micro_ledger.py counts the whole process; on a shared machine the event
loop's share and its noise hide what the writer thread itself costs. Here each
measurement runs in a fresh child process importing the gateway from a source
tree, drives hold+settle pairs through the Ledger on a durable SQLite file
(request ids from the tree's own new_request_id), and reads the CPU time of
every thread but the event loop's from /proc/self/task/*/schedstat: the writer
thread (the DB pool's threads are idle on this path). Trees are measured in
turns (A B A B), median and best reported.

--statements instead wraps LeanConnection's one/count/run_sql in the child and
prints the thread CPU of each statement (binding, the driver and SQLite; about
1 us of it is the clock itself), per call: which statement to look at next.

    .venv/bin/python bench/micro_writer.py                            # this tree, c=1 and c=16
    .venv/bin/python bench/micro_writer.py --compare /tmp/base --rounds 6
    .venv/bin/python bench/micro_writer.py --statements --concurrency-levels 16
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent


def _threads_cpu_ns() -> dict[str, int]:
    """CPU time (ns) of every thread of this process, by thread id."""
    found: dict[str, int] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as stat:
                found[tid] = int(stat.read().split()[0])
        except OSError:  # the thread ended meanwhile
            continue
    return found


def _trace_statements() -> dict[str, list[int]]:
    """Wraps LeanConnection's statement methods to add each call's thread CPU to the returned table."""
    from gateway_core.store import lean

    table: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    clock = time.thread_time_ns

    names: dict[int, str] = {}  # by id: naming a statement compiles it, far too slow to do per call

    def timed(method: Any, name_of: Any) -> Any:
        def wrapper(self: Any, statement: Any, *args: Any) -> Any:
            start = clock()
            result = method(self, statement, *args)
            spent = clock() - start
            name = names.get(id(statement))
            if name is None:
                name = names[id(statement)] = name_of(statement)
            entry = table[name]
            entry[0] += spent
            entry[1] += 1
            return result

        return wrapper

    def lean_name(statement: Any) -> str:
        text = " ".join(str(statement.statement).split())
        return f"{text[:80]} ... ({len(statement.params)} params)"

    lean.LeanConnection.one = timed(lean.LeanConnection.one, lean_name)  # type: ignore[method-assign]
    lean.LeanConnection.count = timed(lean.LeanConnection.count, lean_name)  # type: ignore[method-assign]
    lean.LeanConnection.run_sql = timed(lean.LeanConnection.run_sql, str)  # type: ignore[method-assign]
    return table


async def _measure(concurrency: int, pairs: int, statements: bool) -> dict[str, Any]:
    # Imported here: the child's sys.path decides which tree these come from.
    from gateway_core.metering.ledger import Ledger
    from gateway_core.metering.outcome import UsageOutcome, UsageStatus
    from gateway_core.request_ids import new_request_id
    from gateway_core.store.store import open_store

    table = _trace_statements() if statements else {}
    with tempfile.TemporaryDirectory() as tmp:
        store = await open_store(f"sqlite:///{tmp}/writer.db")
        try:
            account = await store.create_account("bench")
            await store.top_up(account.id, 10**12, "bench-top-up")
            key, _ = await store.create_api_key(account.id, pepper="bench-pepper")
            ledger = Ledger(store.db, instance_id=f"bench-{os.getpid()}")
            await ledger.ensure_instance()
            outcome = UsageOutcome(
                model="m", provider="p", upstream_model="u", prompt_tokens=10, completion_tokens=16,
                cached_tokens=0, reasoning_tokens=0, cost_micros=12, status=UsageStatus.OK, latency_ms=3,
                time_to_first_token_ms=2, estimated=False,
            )  # fmt: skip

            async def worker(count: int) -> None:
                for _ in range(count):
                    hold = await ledger.hold(
                        request_id=new_request_id(), account_id=account.id, api_key_id=key.id,
                        amount_micros=100, model="m", provider="p", upstream_model="u",
                    )  # fmt: skip
                    await ledger.settle(hold, outcome)

            await asyncio.gather(*(worker(300 // concurrency + 1) for _ in range(concurrency)))  # warm up
            table.clear()
            loop_thread = str(threading.get_native_id())
            per_worker = pairs // concurrency
            before = _threads_cpu_ns()
            await asyncio.gather(*(worker(per_worker) for _ in range(concurrency)))
            after = _threads_cpu_ns()
        finally:
            await store.close()
    done = per_worker * concurrency
    writer_ns = sum(ns - before.get(tid, 0) for tid, ns in after.items() if tid != loop_thread)
    return {
        "writer_us": writer_ns / done / 1000,
        "loop_us": (after[loop_thread] - before[loop_thread]) / done / 1000,
        "statements": {name: (ns / calls / 1000, calls / done) for name, (ns, calls) in table.items()},
    }


def _child(args: argparse.Namespace) -> None:
    sys.path.insert(0, args.tree)
    print(json.dumps(asyncio.run(_measure(args.concurrency, args.pairs, args.statements))))


def _run_child(tree: str, concurrency: int, pairs: int, statements: bool) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", "--tree", tree, "--concurrency", str(concurrency)]
    argv += ["--pairs", str(pairs)] + (["--statements"] if statements else [])
    out = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=tree).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", default=str(HERE), help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--compare", default="", help="another source tree to measure in turns with this one")
    parser.add_argument("--pairs", type=int, default=3000, help="hold+settle pairs per measurement")
    parser.add_argument("--rounds", type=int, default=4, help="measurements per tree and concurrency")
    parser.add_argument("--concurrency-levels", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--statements", action="store_true", help="CPU per statement instead (one round per tree)")
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    trees = [("this", str(HERE))] + ([("compare", args.compare)] if args.compare else [])
    for concurrency in args.concurrency_levels:
        if args.statements:
            for label, tree in trees:
                result = _run_child(tree, concurrency, args.pairs, True)
                print(f"conc {concurrency:3} {label:8} writer {result['writer_us']:6.0f} us/pair  [{tree}]")
                for name, (us, per_pair) in sorted(result["statements"].items(), key=lambda item: -item[1][0] * item[1][1]):
                    print(f"    {us * per_pair:6.1f} us/pair  ({us:6.1f} us x {per_pair:4.2f})  {name}")
            continue
        runs: dict[str, list[float]] = {label: [] for label, _ in trees}
        for round_ in range(args.rounds):
            for label, tree in trees if round_ % 2 == 0 else list(reversed(trees)):
                runs[label].append(_run_child(tree, concurrency, args.pairs, False)["writer_us"])
        for label, tree in trees:
            values = runs[label]
            print(
                f"conc {concurrency:3} {label:8} writer thread CPU/pair median {statistics.median(values):6.0f} us,"
                f" best {min(values):6.0f} us  {sorted(round(value) for value in values)}  [{tree}]"
            )


if __name__ == "__main__":
    main()
