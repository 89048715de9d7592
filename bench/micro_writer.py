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

--callgrind N instead runs each tree's child under valgrind's callgrind (one
dump per thread) and counts the user-space instructions of N pairs, the
writer thread's and the loop's: deterministic, for changes below the noise of
CPU time. --callgrind-keep DIR keeps the dumps (callgrind_annotate). SQLite's
own functions get names if LD_LIBRARY_PATH points at a libsqlite3.so.0 with
symbols (Debian's is stripped; one linked from its libsqlite3.a has them).

    .venv/bin/python bench/micro_writer.py                            # this tree, c=1 and c=16
    .venv/bin/python bench/micro_writer.py --compare /tmp/base --rounds 6
    .venv/bin/python bench/micro_writer.py --statements --concurrency-levels 16
    .venv/bin/python bench/micro_writer.py --callgrind 200 --concurrency-levels 1 --compare /tmp/base
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import glob
import json
import os
import shutil
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


def _handshake(word: str) -> None:
    """--callgrind: tells the parent we reached word and waits until it has zeroed or dumped the counters."""
    print(word, flush=True)
    sys.stdin.readline()


async def _measure(
    concurrency: int, pairs: int, statements: bool, callgrind: bool = False, page_size: int = 0
) -> dict[str, Any]:
    # Imported here: the child's sys.path decides which tree these come from.
    from gateway_core.metering.ledger import Ledger
    from gateway_core.metering.outcome import UsageOutcome, UsageStatus
    from gateway_core.request_ids import new_request_id
    from gateway_core.store.store import open_store

    table = _trace_statements() if statements else {}
    with tempfile.TemporaryDirectory() as tmp:
        if page_size:  # a database made with this page size (WAL mode fixes it: the gateway keeps it)
            import sqlite3

            made = sqlite3.connect(f"{tmp}/writer.db")
            made.execute(f"PRAGMA page_size={page_size}")
            made.execute("PRAGMA journal_mode=WAL")
            made.close()
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
            if callgrind:
                await asyncio.sleep(0.2)  # the warm-up's last commit is done
                _handshake("zero")
            before = _threads_cpu_ns()
            await asyncio.gather(*(worker(per_worker) for _ in range(concurrency)))
            after = _threads_cpu_ns()
            if callgrind:
                _handshake("dump")
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
    print(json.dumps(asyncio.run(_measure(args.concurrency, args.pairs, args.statements, args.callgrind > 0, args.page_size))))


def _run_child(tree: str, concurrency: int, pairs: int, statements: bool, page_size: int = 0) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", "--tree", tree, "--concurrency", str(concurrency)]
    argv += ["--page-size", str(page_size)]
    argv += ["--pairs", str(pairs)] + (["--statements"] if statements else [])
    out = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=tree).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _callgrind_child(
    tree: str, concurrency: int, pairs: int, out: str, keep: Path | None, name: str, page_size: int = 0
) -> dict[str, float]:
    """Thousands of instructions per pair, by thread ('loop' is the main thread, the writer's is 'writer',
    the rest 'other'), of one tree's child under callgrind."""
    argv = [sys.executable, __file__, "--child", "--tree", tree, "--concurrency", str(concurrency),
            "--pairs", str(pairs), "--callgrind", str(pairs), "--page-size", str(page_size)]  # fmt: skip
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
               "--separate-threads=yes", *argv]  # fmt: skip
    env = {**os.environ, "PYTHONMALLOC": "malloc"}  # valgrind sees every block
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, cwd=tree, env=env)  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    counts: dict[str, float] = collections.defaultdict(float)
    for line in child.stdout:
        word = line.strip()
        if word == "zero":
            subprocess.run(["callgrind_control", "--zero", str(child.pid)], check=True, capture_output=True)
        elif word == "dump":
            before = set(glob.glob(out + "*"))
            subprocess.run(["callgrind_control", "--dump", str(child.pid)], check=True, capture_output=True)
            totals: dict[str, int] = {}
            for path in sorted(set(glob.glob(out + "*")) - before):
                with open(path) as f:
                    totals[path] = next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:")))
                if keep is not None:
                    shutil.copy(path, keep / f"callgrind.{name}{path[path.rfind('-'):]}")
            # The loop thread is dumped first (-01); the writer is the busiest of the rest (the pool's are idle).
            loop = next(path for path in totals if path.endswith("-01"))
            writer = max((path for path in totals if path != loop), key=totals.__getitem__)
            for path, total in totals.items():
                role = "loop" if path == loop else "writer" if path == writer else "other"
                counts[role] += total / pairs / 1e3
        else:
            continue
        child.stdin.write("go\n")
        child.stdin.flush()
    child.wait()
    return dict(counts)


def _run_callgrind(args: argparse.Namespace, trees: list[tuple[str, str]]) -> None:
    keep = Path(args.callgrind_keep) if args.callgrind_keep else None
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="micro-writer-") as tmp:
        for concurrency in args.concurrency_levels:
            print(f"thousands of instructions per hold+settle pair (callgrind, {args.callgrind} pairs, conc {concurrency}):")
            for number, (label, tree) in enumerate(trees):
                out = str(Path(tmp) / f"callgrind-{concurrency}-{number}")
                counts = _callgrind_child(
                    tree, concurrency, args.callgrind, out, keep, f"tree{number}.c{concurrency}", args.page_size
                )
                shown = "  ".join(f"{role} {counts.get(role, 0.0):8.1f}" for role in ("writer", "loop", "other"))
                print(f"  {label:8} {shown}  [{tree}]")


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
    parser.add_argument("--callgrind", type=int, default=0, metavar="N",
                        help="instructions of N pairs per thread instead, under valgrind's callgrind (one run per tree)")
    parser.add_argument("--callgrind-keep", metavar="DIR", help="with --callgrind: keep the dumps here")
    parser.add_argument("--page-size", type=int, default=0,
                        help="make the database with this SQLite page size (default: the tree's own choice)")
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    trees = [("this", str(HERE))] + ([("compare", args.compare)] if args.compare else [])
    if args.callgrind:
        _run_callgrind(args, trees)
        return
    for concurrency in args.concurrency_levels:
        if args.statements:
            for label, tree in trees:
                result = _run_child(tree, concurrency, args.pairs, True, args.page_size)
                print(f"conc {concurrency:3} {label:8} writer {result['writer_us']:6.0f} us/pair  [{tree}]")
                for name, (us, per_pair) in sorted(result["statements"].items(), key=lambda item: -item[1][0] * item[1][1]):
                    print(f"    {us * per_pair:6.1f} us/pair  ({us:6.1f} us x {per_pair:4.2f})  {name}")
            continue
        runs: dict[str, list[float]] = {label: [] for label, _ in trees}
        for round_ in range(args.rounds):
            for label, tree in trees if round_ % 2 == 0 else list(reversed(trees)):
                runs[label].append(_run_child(tree, concurrency, args.pairs, False, args.page_size)["writer_us"])
        for label, tree in trees:
            values = runs[label]
            print(
                f"conc {concurrency:3} {label:8} writer thread CPU/pair median {statistics.median(values):6.0f} us,"
                f" best {min(values):6.0f} us  {sorted(round(value) for value in values)}  [{tree}]"
            )


if __name__ == "__main__":
    main()
