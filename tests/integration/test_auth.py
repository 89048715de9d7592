"""Authenticator against a real SQLite store: one error for every bad key, bounded caching."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway_core import keys
from gateway_core.auth import INVALID_KEY_MESSAGE, Authenticator, Principal, bearer_token
from gateway_core.bootstrap import create_demo_account_if_empty
from gateway_core.errors import GatewayError, Reason
from gateway_core.store import ApiKeyCredential, Database, Store
from tests.store_support import PEPPER, sqlite_url


class CountingLookups:
    """The real store, counting how often authentication reaches the database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls = 0

    async def get_api_key_for_auth(self, key_id: str) -> ApiKeyCredential | None:
        self.calls += 1
        return await self.store.get_api_key_for_auth(key_id)


class Clocks:
    """Injected monotonic and wall clocks that tests move by hand."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = datetime.now(UTC)

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    db = await Database.open(sqlite_url(tmp_path))
    yield Store(db)
    await db.close()


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def lookups(store: Store) -> CountingLookups:
    return CountingLookups(store)


@pytest.fixture
def auth(lookups: CountingLookups, clocks: Clocks) -> Authenticator:
    return Authenticator(lookups, PEPPER, 2.0, lambda: clocks.mono, now=lambda: clocks.wall)


def md(token: str) -> list[tuple[str, str]]:
    return [("user-agent", "test"), ("authorization", f"Bearer {token}")]


async def new_key(store: Store, **kwargs: object) -> tuple[str, str, str]:
    account = await store.create_account("auth")
    key, secret = await store.create_api_key(account.id, pepper=PEPPER, **kwargs)  # type: ignore[arg-type]
    return account.id, key.id, secret


async def assert_rejected(auth: Authenticator, metadata: object) -> None:
    with pytest.raises(GatewayError) as exc:
        await auth.authenticate(metadata)  # type: ignore[arg-type]
    assert exc.value.reason == Reason.INVALID_API_KEY
    assert exc.value.message == INVALID_KEY_MESSAGE
    assert str(exc.value) == INVALID_KEY_MESSAGE


async def test_valid_key_gives_its_principal(store: Store, auth: Authenticator) -> None:
    expire = datetime.now(UTC) + timedelta(days=1)
    account_id, key_id, secret = await new_key(
        store, allowed_models=["m1", "m2"], rpm_limit=10, tpm_limit=20, spend_limit_micros=30, expire_time=expire
    )
    principal = await auth.authenticate(md(secret))
    assert principal == Principal(account_id, key_id, frozenset({"m1", "m2"}), 10, 20, 30, expire)
    assert principal.may_use("m1") and not principal.may_use("m3")
    everything = await auth.authenticate(md((await new_key(store))[2]))
    assert everything.allowed_models == frozenset() and everything.may_use("anything")


async def test_every_bad_key_gets_the_same_error(store: Store, auth: Authenticator, clocks: Clocks) -> None:
    _, _, secret = await new_key(store)
    _, _, revoked = await new_key(store)
    await store.revoke_api_key(keys.parse_key(revoked) or "")
    _, _, expiring = await new_key(store, expire_time=clocks.wall + timedelta(seconds=30))
    _, unknown = keys.generate_key()
    same_id_other_secret = secret[:19] + "A" * 30
    same_id_other_secret += keys.checksum(same_id_other_secret)
    clocks.advance(31)
    cases = [
        [],
        [("authorization", "")],
        [("authorization", f"Basic {secret}")],
        [("authorization", secret)],
        md("garbage"),
        md(secret[:-1] + ("A" if secret[-1] != "A" else "B")),  # checksum typo
        md(unknown),
        md(same_id_other_secret),
        md(revoked),
        md(expiring),
    ]
    for metadata in cases:
        await assert_rejected(auth, metadata)


async def test_malformed_keys_never_reach_the_database(
    store: Store, auth: Authenticator, lookups: CountingLookups
) -> None:
    _, _, secret = await new_key(store)
    for token in ["garbage", secret[:-1] + ("A" if secret[-1] != "A" else "B"), secret + "x", "sk-tg-"]:
        await assert_rejected(auth, md(token))
    assert lookups.calls == 0


async def test_bearer_scheme_is_case_insensitive(store: Store, auth: Authenticator) -> None:
    _, key_id, secret = await new_key(store)
    for scheme in ("bearer", "BEARER", "Bearer"):
        principal = await auth.authenticate([("Authorization", f"{scheme} {secret}")])
        assert principal.api_key_id == key_id
    assert (await auth.authenticate([("authorization", f"Bearer {secret}".encode())])).api_key_id == key_id


def test_bearer_token_helper() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("x", "y"), ("Authorization", "  bearer   abc  ")]) == "abc"
    assert bearer_token([("authorization", "Bearer a b")]) is None
    assert bearer_token([("authorization", "Token abc")]) is None
    assert bearer_token([]) is None
    assert bearer_token(None) is None


async def test_revocation_is_honoured_within_the_cache_ttl(
    store: Store, auth: Authenticator, clocks: Clocks, lookups: CountingLookups
) -> None:
    _, key_id, secret = await new_key(store)
    await auth.authenticate(md(secret))
    await store.revoke_api_key(key_id)
    clocks.advance(1.0)
    await auth.authenticate(md(secret))  # still cached: inside the documented 2 s bound
    assert lookups.calls == 1
    clocks.advance(1.0)
    await assert_rejected(auth, md(secret))
    assert lookups.calls == 2
    await assert_rejected(auth, md(secret))
    assert lookups.calls == 3  # revoked keys are not cached


async def test_expiry_is_checked_on_every_call(store: Store, auth: Authenticator, clocks: Clocks) -> None:
    _, _, secret = await new_key(store, expire_time=clocks.wall + timedelta(seconds=1))
    await auth.authenticate(md(secret))
    clocks.wall += timedelta(seconds=1)  # monotonic clock unchanged: the entry is still cached
    await assert_rejected(auth, md(secret))


async def test_cache_is_capped(store: Store, clocks: Clocks, lookups: CountingLookups) -> None:
    auth = Authenticator(lookups, PEPPER, 60.0, lambda: clocks.mono, max_entries=2)
    secrets_ = [(await new_key(store))[2] for _ in range(3)]
    for secret in secrets_:
        await auth.authenticate(md(secret))
    assert lookups.calls == 3
    await auth.authenticate(md(secrets_[2]))
    assert lookups.calls == 3
    await auth.authenticate(md(secrets_[0]))  # evicted as the oldest
    assert lookups.calls == 4


async def test_wrong_pepper_rejects_keys(store: Store, clocks: Clocks) -> None:
    _, _, secret = await new_key(store)
    await assert_rejected(Authenticator(store, "other-pepper"), md(secret))


async def test_demo_bootstrap_creates_a_working_key_once(store: Store, auth: Authenticator) -> None:
    secret = await create_demo_account_if_empty(store, PEPPER)
    assert secret is not None
    principal = await auth.authenticate(md(secret))
    account = await store.get_account(principal.account_id)
    assert (account.display_name, account.balance_micros) == ("demo", 5_000_000)
    key = await store.get_api_key(principal.api_key_id)
    assert key.display_name == "demo key"
    entries, _ = await store.list_ledger_entries(account.id)
    assert [e.request_id for e in entries] == ["demo-initial-credit"]
    assert await create_demo_account_if_empty(store, PEPPER) is None
    assert await store.count_accounts() == 1


async def test_empty_pepper_still_authenticates(store: Store) -> None:
    account = await store.create_account("no pepper")
    _, secret = await store.create_api_key(account.id, pepper="")
    assert (await Authenticator(store, "").authenticate(md(secret))).account_id == account.id
