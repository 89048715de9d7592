"""Core-process leases: heartbeats, and finding holds whose process has died. Plain functions on a Session.

Each running core has one `instances` row and renews heartbeat_at; a hold is
orphaned when its instance row is missing or its heartbeat is older than the
staleness bound. Both sides of that comparison are database time
(store/clock.py), so skewed or jumping replica clocks cannot expire a live
process's holds early or keep a dead one's forever.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Executable, Table, and_, delete, exists, or_, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from gateway_core.store.clock import db_now
from gateway_core.store.models import OPEN_HOLD, Hold, Instance

MAX_INSTANCE_ID = 64
# Rows of instances dead this long, with no open holds, are pruned. Long, so a
# process that was merely stalled for a while does not lose its lease row.
PRUNE_AFTER = timedelta(days=1)
_INSTANCES: Table = Instance.__table__  # type: ignore[attr-defined]


def check_instance_id(instance_id: str) -> str:
    """Refuses an id that cannot be stored."""
    if not instance_id or len(instance_id) > MAX_INSTANCE_ID:
        raise ValueError(f"instance_id must be 1 to {MAX_INSTANCE_ID} characters")
    return instance_id


def heartbeat(session: Session, instance_id: str) -> None:
    """Renews this instance's lease at database time, registering it if it has no row.

    One upsert, so concurrent first calls of one process cannot collide.
    """
    connection = session.connection()
    now = db_now(session)
    row = {"id": instance_id, "started_at": now, "heartbeat_at": now}
    dialect = connection.dialect.name
    upsert: Executable
    # INSERT ... ON CONFLICT DO UPDATE, as each supported backend's SQLAlchemy dialect spells it.
    if dialect == "sqlite":
        lite = sqlite.insert(_INSTANCES).values(row)
        upsert = lite.on_conflict_do_update(index_elements=["id"], set_={"heartbeat_at": lite.excluded.heartbeat_at})
    elif dialect == "postgresql":
        pg = postgresql.insert(_INSTANCES).values(row)
        upsert = pg.on_conflict_do_update(index_elements=["id"], set_={"heartbeat_at": pg.excluded.heartbeat_at})
    else:
        raise NotImplementedError(f"no upsert for the {dialect} dialect")
    connection.execute(upsert)


def orphan_request_ids(session: Session, instance_id: str, stale_after_seconds: float, limit: int) -> list[str]:
    """Open holds of other instances that are gone or stale, oldest first, at most limit."""
    cutoff = db_now(session) - timedelta(seconds=stale_after_seconds)
    query = (
        select(col(Hold.request_id))
        .outerjoin(Instance, col(Instance.id) == col(Hold.instance_id))
        .where(
            text(OPEN_HOLD),  # verbatim, so the partial index of open holds serves it (models.py)
            col(Hold.instance_id) != instance_id,
            or_(col(Instance.id).is_(None), col(Instance.heartbeat_at) < cutoff),
        )
        .order_by(col(Hold.created_at), col(Hold.request_id))
        .limit(limit)
    )
    return list(session.exec(query))


def prune_dead_instances(session: Session) -> int:
    """Deletes lease rows dead for PRUNE_AFTER that own no open hold; how many went."""
    cutoff = db_now(session) - PRUNE_AFTER
    holds: Table = Hold.__table__  # type: ignore[attr-defined]
    owns_open_hold = exists().where(and_(holds.c.instance_id == _INSTANCES.c.id, text(OPEN_HOLD))).select_from(holds)
    statement = delete(_INSTANCES).where(_INSTANCES.c.heartbeat_at < cutoff, ~owns_open_hold)
    return int(session.connection().execute(statement).rowcount)


def retire(session: Session, instance_id: str) -> None:
    """Deletes this instance's lease row at a clean stop.

    Any hold it still owns is then an orphan at once (no row), so a live core
    releases it at its next pass instead of after orphan_after_seconds.
    """
    session.connection().execute(delete(_INSTANCES).where(_INSTANCES.c.id == instance_id))
