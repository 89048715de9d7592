"""The Ledger: the only code that holds, settles and releases money.

Every operation is one write transaction (BEGIN IMMEDIATE on SQLite) on the
shared database, so any number of core processes can use it at once. Holds
and settlements, run for every request, take the lean path (Database.run_lean:
raw DBAPI connection, statements compiled once); a hold's transaction may
commit without waiting for fsync on SQLite (see store/db.py, _RELAXED_SYNCHRONOUS):

- ``hold`` reserves a request's worst-case cost on its account and key, or
  refuses with INSUFFICIENT_BALANCE; a request_id is admitted at most once.
- ``settle`` charges the real cost (clamped to the hold), releases the rest
  and writes the request's usage record, exactly once per request_id; any
  later call returns the first result with ``replayed=True``.
- ``release_orphans`` frees the holds of core processes that died (their
  lease went stale in database time), each like a zero-cost settlement with
  an 'abandoned' usage record. A hold closes exactly once, whoever gets there
  first: its own process settling late then gets that release back, and is
  never charged after it.

Each process leases its holds under its ``instance_id``; keep the lease fresh
with ``heartbeat()`` (the Reconciler does this), or other processes will
release its holds once ``stale_after_seconds`` have passed.
"""

from __future__ import annotations

from functools import partial

from sqlmodel import Session

from gateway_core import metrics
from gateway_core.metering.outcome import Hold, Settlement, UsageOutcome
from gateway_core.observability.request_record import observe_settlement
from gateway_core.store import holds, instances
from gateway_core.store.db import Database
from gateway_core.store.holds import HoldRequest
from gateway_core.store.holds_together import ReserveWrite, SettleWrite

# Orphans released per transaction: keeps each write short for other writers.
ORPHAN_BATCH = 100


class Ledger:
    """Holds and settlements of one core process (its instance_id) on a shared database."""

    def __init__(self, db: Database, *, instance_id: str) -> None:
        self._db = db
        self._instance_id = instances.check_instance_id(instance_id)
        self._registered = False
        # Holds this process took and has not settled yet: the holds_outstanding gauge, exactly.
        self._open_holds: set[str] = set()

    @property
    def instance_id(self) -> str:
        """The lease this process's holds are owned by."""
        return self._instance_id

    async def ensure_instance(self) -> None:
        """Registers (or renews) this process's lease; call once at start."""
        await self.heartbeat()

    async def heartbeat(self) -> None:
        """Renews this process's lease at database time."""
        await self._db.run(partial(instances.heartbeat, instance_id=self._instance_id), write=True)
        self._registered = True

    async def retire(self) -> None:
        """Gives up this process's lease at a clean stop; call after its last hold is settled."""
        await self._db.run(partial(instances.retire, instance_id=self._instance_id), write=True)
        self._registered = False

    async def hold(
        self,
        *,
        request_id: str,
        account_id: str,
        api_key_id: str,
        amount_micros: int,
        model: str = "",
        provider: str = "",
        upstream_model: str = "",
    ) -> Hold:
        """Reserves amount_micros for request_id on the account and the key's spend limit.

        Raises GatewayError INSUFFICIENT_BALANCE (nothing reserved), ALREADY_EXISTS
        (request_id used before), NOT_FOUND (unknown account, or a key not of it).
        model/provider/upstream_model name the request if it is ever abandoned.
        An amount of 0 (a free model) still admits the request and gets a usage record.
        """
        request = HoldRequest(
            request_id=request_id,
            account_id=account_id,
            api_key_id=api_key_id,
            amount_micros=amount_micros,
            instance_id=self._instance_id,
            model=model,
            provider=provider,
            upstream_model=upstream_model,
        )
        holds.check_hold_request(request)
        if not self._registered:
            # The lease must exist before the hold, or another process would see an
            # instance-less hold and release it at once.
            await self.heartbeat()
        # durable=False: losing it to a power cut is losing a hold never answered (store/db.py).
        hold = await self._db.run_lean(ReserveWrite(request), durable=False)
        self._opened(hold.request_id)
        return hold

    async def settle(self, hold: Hold, outcome: UsageOutcome) -> Settlement:
        """Charges min(max(cost, 0), hold) once, releases the rest, records the usage.

        Idempotent by hold.request_id: safe to retry and to call concurrently.
        """
        # A group commit runs the settlements (and holds) queued with it together (store/holds_together.py).
        settlement = await self._db.run_lean(SettleWrite(hold.request_id, outcome))
        self._closed(hold.request_id)
        observe_settlement(hold, outcome, settlement)
        return settlement

    def _opened(self, request_id: str) -> None:
        if request_id not in self._open_holds:
            self._open_holds.add(request_id)
            metrics.HOLDS_OUTSTANDING.inc()

    def _closed(self, request_id: str) -> None:
        if request_id in self._open_holds:
            self._open_holds.discard(request_id)
            metrics.HOLDS_OUTSTANDING.dec()

    async def release_orphans(self, *, stale_after_seconds: float) -> int:
        """Releases open holds of other processes whose lease is missing or stale; how many.

        Never touches this process's own holds. Safe to run from several
        processes at once: each hold is released (or settled) exactly once.
        """
        if stale_after_seconds < 0:
            raise ValueError("stale_after_seconds must not be negative")
        # On PostgreSQL each release is its own transaction: a batch that has locked an
        # account's row, waiting for a hold that a late settlement has locked (and that
        # settlement waiting for the account), would deadlock. SQLite has one writer.
        batch = ORPHAN_BATCH if self._db.engine.dialect.name == "sqlite" else 1
        total = 0
        while True:
            call = partial(self._release_batch, stale_after_seconds=stale_after_seconds, batch=batch)
            released, found = await self._db.run(call, write=True)
            total += released
            if found < batch:
                return total

    def _release_batch(self, session: Session, stale_after_seconds: float, batch: int) -> tuple[int, int]:
        found = instances.orphan_request_ids(session, self._instance_id, stale_after_seconds, batch)
        # False when a late settlement (or another reconciler) closed it first.
        released = sum(1 for request_id in found if holds.release_hold(session, request_id))
        if len(found) < batch:
            instances.prune_dead_instances(session)
        return released, len(found)

