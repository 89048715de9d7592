"""Which pages each hold and each settle transaction writes to SQLite's WAL, per table and index.

Every page a transaction changes is written to the WAL as one frame at COMMIT
(two write syscalls) and copied into the database file again at the next
checkpoint, so frames per request are a cost that does not depend on the
machine's load. This fills a fresh database with --prefill hold+settle pairs
(request ids from the tree's own new_request_id, as the gateway's), turns automatic checkpoints off, then
reads the frames each of --pairs further holds and settles appended to the WAL
and names their pages' b-trees (SQLite's dbstat table).

    .venv/bin/python bench/wal_pages.py                  # this tree
    .venv/bin/python bench/wal_pages.py --tree /tmp/main # another source tree (a git archive)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
_WAL_HEADER, _FRAME_HEADER = 32, 24


def _page_numbers(wal: Path, start: int, end: int, page_size: int) -> list[int]:
    """The page number of every frame in the WAL file between byte offsets start and end."""
    with wal.open("rb") as file:
        file.seek(start)
        data = file.read(end - start)
    frame = _FRAME_HEADER + page_size
    return [struct.unpack(">I", data[offset : offset + 4])[0] for offset in range(0, len(data), frame)]


async def _measure(tree: str, prefill: int, pairs: int) -> None:
    sys.path.insert(0, tree)  # the tree's own code
    from sqlalchemy import event

    from gateway_core.metering.ledger import Ledger
    from gateway_core.request_ids import new_request_id
    from gateway_core.metering.outcome import UsageOutcome, UsageStatus
    from gateway_core.store.store import open_store

    path = Path(tempfile.mkdtemp()) / "pages.db"
    store = await open_store(f"sqlite:///{path}")
    account = await store.create_account("bench")
    await store.top_up(account.id, 10**15, "bench-top-up")
    key, _ = await store.create_api_key(account.id, pepper="bench-pepper")
    ledger = Ledger(store.db, instance_id="bench")
    await ledger.ensure_instance()
    outcome = UsageOutcome(
        model="m", provider="p", upstream_model="u", prompt_tokens=10, completion_tokens=16, cached_tokens=0,
        reasoning_tokens=0, cost_micros=12, status=UsageStatus.OK, latency_ms=3, time_to_first_token_ms=2,
        estimated=False,
    )  # fmt: skip

    async def hold() -> Any:
        return await ledger.hold(
            request_id=new_request_id(), account_id=account.id, api_key_id=key.id, amount_micros=100
        )

    for _ in range(prefill):
        await ledger.settle(await hold(), outcome)
    event.listen(store.db.engine, "connect", lambda connection, _: connection.execute("PRAGMA wal_autocheckpoint=0"))
    store.db.engine.dispose()  # the writer's connection too: reopened with the listener
    await ledger.settle(await hold(), outcome)  # the writer swaps its connection for one with the listener
    truncate = sqlite3.connect(path)  # an empty WAL: from here on it only grows, a frame per changed page
    truncate.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    truncate.close()
    wal = Path(f"{path}-wal")
    offsets: list[tuple[int, int, int]] = []  # WAL size before the hold, before the settle, after it
    written: dict[str, list[list[int]]] = {"hold": [], "settle": []}
    for _ in range(pairs):
        before = max(wal.stat().st_size if wal.exists() else 0, _WAL_HEADER)
        held = await hold()
        between = wal.stat().st_size
        await ledger.settle(held, outcome)
        offsets.append((before, between, wal.stat().st_size))
    inspect = sqlite3.connect(path)
    page_size = int(inspect.execute("PRAGMA page_size").fetchone()[0])
    inspect.close()
    for before, between, after in offsets:
        written["hold"].append(_page_numbers(wal, before, between, page_size))
        written["settle"].append(_page_numbers(wal, between, after, page_size))
    await store.close()  # the last connection checkpoints: dbstat then names every page, new ones too
    inspect = sqlite3.connect(path)
    names = {int(page): str(name) for name, page in inspect.execute("SELECT name, pageno FROM dbstat")}
    inspect.close()
    _report(written, names, pairs)


def _report(written: dict[str, list[list[int]]], names: dict[int, str], pairs: int) -> None:
    for kind, transactions in written.items():
        frames = sum(len(pages) for pages in transactions)
        print(f"{kind:7} {frames / pairs:5.2f} frames per transaction")
        by_tree = collections.Counter(names.get(page, f"page {page}") for pages in transactions for page in pages)
        for name, count in sorted(by_tree.items()):
            print(f"        {count / pairs:5.2f}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", default=str(HERE), help="source tree whose gateway_core to measure")
    parser.add_argument("--prefill", type=int, default=5000, help="hold+settle pairs written first")
    parser.add_argument("--pairs", type=int, default=200, help="pairs whose frames are counted")
    args = parser.parse_args()
    asyncio.run(_measure(args.tree, args.prefill, args.pairs))


if __name__ == "__main__":
    main()
