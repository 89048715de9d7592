"""Model-based property test of the Ledger: a Hypothesis state machine against an in-memory model.

Rules: top-ups, holds (affordable or not, with and without key spend limits),
settlements (cost within, above and below the hold), replayed settlements and
reused request ids, and crashes: reconcilers first leave the live process's
holds alone, then it dies, one of several racing reconcilers releases each of
its holds exactly once, and its late settlement gets the release back.
After every step the database must equal the model and satisfy the invariants.

Runs on SQLite and PostgreSQL. Examples share one database (fresh accounts, ids and instances per
example), so statements compile once instead of once per example.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import event

from gateway_core.errors import GatewayError, Reason
from gateway_core.metering.ledger import Ledger
from gateway_core.metering.outcome import Hold, UsageStatus
from gateway_core.store import Database, Store
from tests.ledger_support import PEPPER, check_invariants, make_stale, outcome

T = TypeVar("T")
# Far longer than the test runs: only heartbeats backdated by make_stale() count as dead.
STALE_AFTER_SECONDS = 600.0


@dataclass
class ModelHold:
    """What the model knows of one admitted request."""

    hold: Hold
    status: str = "open"
    charged: int = 0
    balance_after: int = 0


@dataclass
class ModelKey:
    """A key's spend, held amount and limit (0: none)."""

    account: str
    limit: int
    spent: int = 0
    held: int = 0


@dataclass
class ModelAccount:
    """An account's balance and held amount."""

    balance: int = 0
    held: int = 0


@dataclass
class Model:
    """The ledger's meaning in a few dicts (insertion-ordered: random ids must not steer the draws)."""

    accounts: dict[str, ModelAccount] = field(default_factory=dict)
    keys: dict[str, ModelKey] = field(default_factory=dict)
    holds: dict[str, ModelHold] = field(default_factory=dict)

    def ids(self, *, open_: bool) -> list[str]:
        return [r for r, h in self.holds.items() if (h.status == "open") == open_]


class LedgerMachine(RuleBasedStateMachine):
    """Drives a Ledger and its model side by side; the database and loop are the test's."""

    db: ClassVar[Database]
    loop: ClassVar[asyncio.AbstractEventLoop]
    _examples = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"x{next(self._examples)}"
        self.store = Store(self.db)
        self.generation = 0
        self.ledger = self.new_ledger("core-0")
        self.model = Model()
        self.ids = itertools.count()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def new_ledger(self, name: str) -> Ledger:
        return Ledger(self.db, instance_id=f"{self.prefix}-{name}")

    def new_id(self, kind: str) -> str:
        return f"{self.prefix}-{kind}-{next(self.ids)}"

    @initialize(
        limit=st.integers(min_value=1, max_value=3_000),
        balances=st.tuples(st.integers(min_value=0, max_value=5_000), st.integers(min_value=0, max_value=5_000)),
    )
    def accounts_and_keys(self, limit: int, balances: tuple[int, int]) -> None:
        """Account a has an unlimited key and a limited one; account b one unlimited key."""
        for name, limits, balance in (("a", (0, limit), balances[0]), ("b", (0,), balances[1])):
            account = self.run(self.store.create_account(name))
            self.model.accounts[account.id] = ModelAccount(balance=balance)
            if balance:
                self.run(self.store.top_up(account.id, balance, self.new_id("initial")))
            for spend_limit in limits:
                key, _ = self.run(self.store.create_api_key(account.id, pepper=PEPPER, spend_limit_micros=spend_limit))
                self.model.keys[key.id] = ModelKey(account.id, spend_limit)

    @rule(data=st.data(), amount=st.integers(min_value=1, max_value=2_000))
    def top_up(self, data: st.DataObject, amount: int) -> None:
        account_id = data.draw(st.sampled_from(list(self.model.accounts)))
        self.run(self.store.top_up(account_id, amount, self.new_id("top-up")))
        self.model.accounts[account_id].balance += amount

    @rule(data=st.data(), amount=st.integers(min_value=0, max_value=1_500))
    def hold(self, data: st.DataObject, amount: int) -> None:
        key_id = data.draw(st.sampled_from(list(self.model.keys)))
        key = self.model.keys[key_id]
        account = self.model.accounts[key.account]
        affordable = account.balance - account.held >= amount and (
            key.limit == 0 or key.spent + key.held + amount <= key.limit
        )
        request_id = self.new_id("req")
        try:
            hold = self.run(
                self.ledger.hold(request_id=request_id, account_id=key.account, api_key_id=key_id, amount_micros=amount)
            )
        except GatewayError as err:
            assert not affordable and err.reason == Reason.INSUFFICIENT_BALANCE
            return
        assert affordable
        assert hold == Hold(request_id, key.account, key_id, amount)
        account.held += amount
        key.held += amount
        self.model.holds[request_id] = ModelHold(hold)

    @precondition(lambda self: self.model.ids(open_=True))
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        held = self.model.holds[data.draw(st.sampled_from(self.model.ids(open_=True)))]
        amount = held.hold.amount_micros
        cost = data.draw(
            st.one_of(
                st.integers(min_value=0, max_value=amount),
                st.integers(min_value=amount + 1, max_value=amount + 1_000),
                st.integers(min_value=-1_000, max_value=-1),
            )
        )
        charged = min(max(cost, 0), amount)
        account = self.model.accounts[held.hold.account_id]
        key = self.model.keys[held.hold.api_key_id]
        settlement = self.run(self.ledger.settle(held.hold, outcome(cost)))
        account.balance -= charged
        account.held -= amount
        key.spent += charged
        key.held -= amount
        held.status, held.charged, held.balance_after = "settled", charged, account.balance
        assert (settlement.charged_micros, settlement.released_micros) == (charged, amount - charged)
        assert (settlement.balance_after_micros, settlement.replayed) == (account.balance, False)
        record = self.run(self.store.get_usage_record(held.hold.request_id))
        assert record is not None and record.cost_micros == charged and record.held_micros == amount
        assert record.clamped == (cost != charged)

    @precondition(lambda self: self.model.ids(open_=False))
    @rule(data=st.data(), cost=st.integers(min_value=-1_000, max_value=5_000))
    def replay_settle(self, data: st.DataObject, cost: int) -> None:
        held = self.model.holds[data.draw(st.sampled_from(self.model.ids(open_=False)))]
        hold = held.hold
        settlement = self.run(self.ledger.settle(hold, outcome(cost)))
        assert settlement.replayed
        assert (settlement.charged_micros, settlement.released_micros, settlement.balance_after_micros) == (
            held.charged,
            hold.amount_micros - held.charged,
            held.balance_after,
        )
        with pytest.raises(GatewayError) as exc:
            # Amount 0 passes the balance checks, so only the used request_id can refuse it.
            self.run(
                self.ledger.hold(
                    request_id=hold.request_id, account_id=hold.account_id, api_key_id=hold.api_key_id, amount_micros=0
                )
            )
        assert exc.value.reason == Reason.ALREADY_EXISTS

    # Three arguments also sort this rule last among the rules Hypothesis picks
    # from, which draws early rules more often: crashes stay rarer than settlements.
    @precondition(lambda self: self.model.ids(open_=True))
    @rule(
        reconcilers=st.integers(min_value=1, max_value=2),
        late_cost=st.integers(min_value=0, max_value=2_000),
        data=st.data(),
    )
    def crash(self, reconcilers: int, late_cost: int, data: st.DataObject) -> None:
        """The serving process dies; other processes release what it held, each hold exactly once."""
        live = self.ledger
        # While its lease is fresh nobody else touches its holds; its own reconciler never does.
        assert self.run(self.new_ledger("observer").release_orphans(stale_after_seconds=STALE_AFTER_SECONDS)) == 0
        make_stale(self.db.engine, live.instance_id)
        assert self.run(live.release_orphans(stale_after_seconds=STALE_AFTER_SECONDS)) == 0
        self.generation += 1
        self.ledger = self.new_ledger(f"core-{self.generation}")
        peers = [self.ledger, *(self.new_ledger(f"peer-{i}") for i in range(1, reconcilers))]
        released = [self.run(peer.release_orphans(stale_after_seconds=STALE_AFTER_SECONDS)) for peer in peers]
        orphans = self.model.ids(open_=True)
        assert released == [len(orphans)] + [0] * (reconcilers - 1)
        for request_id in orphans:
            held = self.model.holds[request_id]
            account = self.model.accounts[held.hold.account_id]
            account.held -= held.hold.amount_micros
            self.model.keys[held.hold.api_key_id].held -= held.hold.amount_micros
            held.status, held.balance_after = "released", account.balance
            record = self.run(self.store.get_usage_record(request_id))
            assert record is not None and record.status == UsageStatus.ABANDONED and record.estimated
        # The "dead" process was only cut off and settles late: it gets the release, no charge.
        late = self.model.holds[data.draw(st.sampled_from(orphans))].hold
        settlement = self.run(live.settle(late, outcome(late_cost)))
        assert (settlement.charged_micros, settlement.released_micros) == (0, late.amount_micros)
        assert settlement.replayed

    @invariant()
    def database_equals_model(self) -> None:
        if not self.model.accounts:
            return
        seen = check_invariants(self.db.engine)
        assert {a: seen.accounts[a] for a in self.model.accounts} == {
            a: (m.balance, m.held) for a, m in self.model.accounts.items()
        }
        assert {k: seen.keys[k] for k in self.model.keys} == {k: (m.spent, m.held) for k, m in self.model.keys.items()}
        mine = {r: s for r, s in seen.holds.items() if r.startswith(f"{self.prefix}-")}
        assert mine == {r: m.status for r, m in self.model.holds.items()}


def _no_fsync(dbapi_connection: Any, _record: Any) -> None:
    # Logic, not durability, is under test here (test_crash_recovery covers that).
    dbapi_connection.execute("PRAGMA synchronous=OFF")


def test_ledger_behaves_like_its_model(database_url: str) -> None:
    loop = asyncio.new_event_loop()
    db = loop.run_until_complete(Database.open(database_url, workers=1))
    if db.engine.dialect.name == "sqlite":
        event.listen(db.engine, "connect", _no_fsync)
        db.engine.dispose()  # the migration's connection was opened without it

    class Machine(LedgerMachine):
        pass

    Machine.db, Machine.loop = db, loop
    try:
        run_state_machine_as_test(
            Machine,
            settings=settings(
                max_examples=40,
                stateful_step_count=20,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        loop.run_until_complete(db.close())
        loop.close()
