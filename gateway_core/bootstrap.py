"""First-start conveniences: a demo account and key on an empty database."""

from __future__ import annotations

from gateway_core.store import Store

DEMO_ACCOUNT_NAME = "demo"
DEMO_KEY_NAME = "demo key"
DEMO_CREDIT_REQUEST_ID = "demo-initial-credit"


async def create_demo_account_if_empty(store: Store, pepper: str, balance_micros: int = 5_000_000) -> str | None:
    """Creates account "demo" with balance_micros and key "demo key" when no account exists.

    Returns the key's secret (to print once), or None when the database already
    has accounts. Safe when several replicas start together: it happens once.
    """
    created = await store.create_first_account(
        DEMO_ACCOUNT_NAME,
        pepper=pepper,
        credit_micros=balance_micros,
        request_id=DEMO_CREDIT_REQUEST_ID,
        key_name=DEMO_KEY_NAME,
    )
    if created is None:
        return None
    _account, _key, secret = created
    return secret
