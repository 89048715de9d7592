"""Helpers for the ledger suites: funded keys, outcomes, invariant checks, and child processes.

Run as ``python -m tests.ledger_support herd|victim ...`` it is also the
program of the child processes that share a SQLite file with a test (the
cross-process herd and the SIGKILLed core of the crash-recovery test).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, text, update
from sqlmodel import Session, col

from gateway_core.errors import GatewayError
from gateway_core.metering.ledger import Ledger
from gateway_core.metering.outcome import UsageOutcome, UsageStatus
from gateway_core.store import Database, Store
from gateway_core.store.clock import db_now
from gateway_core.store.models import Instance

PEPPER = "test-pepper"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class FundedKey:
    """An account with a balance and one key on it."""

    account_id: str
    key_id: str


async def funded_key(
    store: Store, balance_micros: int, *, spend_limit_micros: int = 0, name: str = "ledger"
) -> FundedKey:
    """A new account topped up with balance_micros (if positive) and a key with the given limit."""
    account = await store.create_account(name)
    if balance_micros > 0:
        await store.top_up(account.id, balance_micros, f"seed-{account.id}")
    key, _ = await store.create_api_key(account.id, pepper=PEPPER, spend_limit_micros=spend_limit_micros)
    return FundedKey(account.id, key.id)


def outcome(
    cost_micros: int,
    *,
    status: UsageStatus = UsageStatus.OK,
    model: str = "m",
    prompt_tokens: int = 10,
    completion_tokens: int = 20,
) -> UsageOutcome:
    """A usage outcome with the given cost and plausible other numbers."""
    return UsageOutcome(
        model=model,
        provider="mock",
        upstream_model=f"up-{model}",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=0,
        reasoning_tokens=0,
        cost_micros=cost_micros,
        status=status,
        latency_ms=120,
        time_to_first_token_ms=15,
        estimated=False,
    )


def make_stale(engine: Engine, instance_id: str, *, seconds: float = 3600.0) -> None:
    """Backdates an instance's heartbeat (in database time), as if its process died that long ago."""
    with Session(engine) as session, session.begin():
        ago = db_now(session) - timedelta(seconds=seconds)
        session.exec(update(Instance).where(col(Instance.id) == instance_id).values(heartbeat_at=ago))


@dataclass(frozen=True)
class Snapshot:
    """Money state read in one transaction: (balance, held) per account, (spent, held) per key, hold statuses."""

    accounts: dict[str, tuple[int, int]]
    keys: dict[str, tuple[int, int]]
    holds: dict[str, str]


def check_invariants(engine: Engine) -> Snapshot:
    """Asserts the money invariants over the whole database (reliability.md §5); returns what it read.

    INV-CONS per account (ledger sums equal balance and held), INV-NONNEG,
    held within balance, held equal to the open holds (accounts and keys),
    a key's spend equal to what its closed holds charged, and INV-ONE: one
    usage record per closed hold, none for an open one, with the hold's charge;
    and at most one ledger entry per (kind, request_id), which for hold, settle
    and release entries the holds table guarantees rather than an index.
    """
    with engine.connect() as connection:

        def pairs(sql: str) -> dict[str, tuple[int, int]]:
            return {str(a): (int(b or 0), int(c or 0)) for a, b, c in connection.exec_driver_sql(sql)}

        accounts = pairs("SELECT id, balance_micros, held_micros FROM accounts")
        sums = pairs(
            "SELECT account_id, SUM(amount_micros), SUM(held_delta_micros) FROM ledger_entries GROUP BY account_id"
        )
        keys = pairs("SELECT id, spent_micros, held_micros FROM api_keys")
        holds = {str(r): str(s) for r, s in connection.exec_driver_sql("SELECT request_id, status FROM holds")}
        by_account = pairs(_BY_OWNER.format(owner="account_id"))
        by_key = pairs(_BY_OWNER.format(owner="api_key_id"))
        mismatched = connection.exec_driver_sql(_USAGE_MISMATCHES).scalar_one()
        repeated = list(connection.exec_driver_sql(_REPEATED_ENTRIES))
    for account_id, (balance, held) in accounts.items():
        assert sums.get(account_id, (0, 0)) == (balance, held), f"INV-CONS broken on {account_id}"
        assert 0 <= held <= balance, f"held outside [0, balance] on {account_id}"
        assert by_account.get(account_id, (0, 0))[1] == held, f"held is not the open holds on {account_id}"
    for key_id, spent_and_held in keys.items():
        assert by_key.get(key_id, (0, 0)) == spent_and_held, f"key {key_id} disagrees with its holds"
    assert mismatched == 0, "INV-ONE broken: usage records do not match closed holds"
    assert repeated == [], f"ledger entries written twice for one request: {repeated}"
    return Snapshot(accounts, keys, holds)


# Per owner: what closed holds charged, and what open holds still hold.
_BY_OWNER = (
    "SELECT {owner}, SUM(CASE WHEN status <> 'open' THEN charged_micros ELSE 0 END),"
    " SUM(CASE WHEN status = 'open' THEN amount_micros ELSE 0 END) FROM holds GROUP BY {owner}"
)
# Holds whose usage record is missing (closed), present (open) or disagrees; records without a hold.
_USAGE_MISMATCHES = (
    "SELECT (SELECT COUNT(*) FROM holds h LEFT JOIN usage_records u ON u.request_id = h.request_id"
    "  WHERE (h.status = 'open') <> (u.request_id IS NULL)"
    "  OR (u.request_id IS NOT NULL AND (u.cost_micros <> h.charged_micros"
    "      OR (u.status = 'abandoned') <> (h.status = 'released'))))"
    " + (SELECT COUNT(*) FROM usage_records u LEFT JOIN holds h ON h.request_id = u.request_id"
    "  WHERE h.request_id IS NULL)"
)

_REPEATED_ENTRIES = (
    "SELECT kind, request_id, COUNT(*) FROM ledger_entries WHERE request_id IS NOT NULL"
    " GROUP BY kind, request_id HAVING COUNT(*) > 1"
)


def entry_kinds(engine: Engine, request_id: str) -> Counter[str]:
    """How many ledger entries of each kind carry request_id."""
    with engine.connect() as connection:
        found = connection.execute(text("SELECT kind FROM ledger_entries WHERE request_id = :r"), {"r": request_id})
        return Counter(str(kind) for (kind,) in found)


def child(*args: str) -> subprocess.Popen[str]:
    """Starts `python -m tests.ledger_support *args` in the repository, stdout piped as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.ledger_support", *args],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


# --- the child processes ------------------------------------------------------------------


async def _herd(url: str, account_id: str, key_id: str, amount: int, count: int, prefix: str) -> None:
    """Waits for a line on stdin, then races count holds; prints what happened as JSON."""
    async with await Database.open(url, migrate=False) as db:
        ledger = Ledger(db, instance_id=f"herd-{prefix}")
        await ledger.ensure_instance()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        async def one(i: int) -> str:
            try:
                await ledger.hold(
                    request_id=f"{prefix}-{i}", account_id=account_id, api_key_id=key_id, amount_micros=amount
                )
            except GatewayError as err:
                return err.reason.value
            return "ADMITTED"

        results = await asyncio.gather(*(one(i) for i in range(count)))
    print(json.dumps(Counter(results)), flush=True)


async def _victim(url: str, account_id: str, key_id: str) -> None:
    """A core that tops up, settles one request, holds another, reports, and waits to be killed."""
    db = await Database.open(url, migrate=False)
    store = Store(db)
    ledger = Ledger(db, instance_id="victim")
    await ledger.ensure_instance()
    await store.top_up(account_id, 10_000, "victim-top-up")
    ids = {"account_id": account_id, "api_key_id": key_id}
    settled = await ledger.hold(request_id="victim-settled", amount_micros=3_000, **ids)
    settlement = await ledger.settle(settled, outcome(1_200))
    names = {"model": "mock-chat", "provider": "mock", "upstream_model": "chat"}
    await ledger.hold(request_id="victim-open", amount_micros=4_000, **ids, **names)
    acknowledged = {"charged": settlement.charged_micros, "balance_after": settlement.balance_after_micros}
    print(json.dumps(acknowledged), flush=True)
    await asyncio.sleep(3600)  # SIGKILLed long before this ends


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "herd":
        url, account_id, key_id, amount, count, prefix = args
        asyncio.run(_herd(url, account_id, key_id, int(amount), int(count), prefix))
    elif command == "victim":
        asyncio.run(_victim(*args))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
