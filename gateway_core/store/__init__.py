"""Persistence: accounts, API keys, the ledger, holds and usage on SQLite or PostgreSQL.

Open with ``store = await open_store(url)`` (migrates the schema) and
``await store.close()`` at shutdown; or ``Store(await Database.open(url))``.
"""

from gateway_core.store.db import Database
from gateway_core.store.models import HoldStatus, LedgerKind
from gateway_core.store.records import (
    AccountRecord,
    ApiKeyCredential,
    ApiKeyRecord,
    HoldRecord,
    LedgerEntryRecord,
    ModelUsage,
    Usage,
)
from gateway_core.store.store import Store, open_store

__all__ = [
    "AccountRecord",
    "ApiKeyCredential",
    "ApiKeyRecord",
    "Database",
    "HoldRecord",
    "HoldStatus",
    "LedgerEntryRecord",
    "LedgerKind",
    "ModelUsage",
    "Store",
    "Usage",
    "open_store",
]
