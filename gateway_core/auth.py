"""Authentication of user API keys from gRPC metadata.

Every failure (no key, malformed, bad checksum, unknown, wrong secret, revoked,
expired) raises the same GatewayError, so a caller learns nothing about which
keys exist, and the key is never echoed. Malformed keys are refused before any
database access.

Revocation bound: a key found valid is cached per process for at most
``cache_seconds`` (default 2 s), so a revoked key stops working on every
replica within that time. Expiry is checked on every call, never cached.
"""

from __future__ import annotations

import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from gateway_core.errors import GatewayError, Reason
from gateway_core.keys import hash_key, parse_key
from gateway_core.store.records import ApiKeyCredential, ApiKeyRecord

INVALID_KEY_MESSAGE = (
    "Incorrect API key provided. You can find your API key in your Tollgate dashboard or ask your operator."
)
DEFAULT_CACHE_SECONDS = 2.0
DEFAULT_CACHE_ENTRIES = 10_000

_BEARER = re.compile(r"\s*bearer\s+(\S+)\s*", re.IGNORECASE)

Metadata = Iterable[tuple[str, str | bytes]]


class KeyLookup(Protocol):
    """The one store method authentication needs."""

    async def get_api_key_for_auth(self, key_id: str) -> ApiKeyCredential | None: ...


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key, its account, and the key's limits (0 = none)."""

    account_id: str
    api_key_id: str
    allowed_models: frozenset[str]  # empty means every model
    rpm_limit: int
    tpm_limit: int
    spend_limit_micros: int
    expire_time: datetime | None
    concurrency_limit: int = 0

    @classmethod
    def from_key(cls, key: ApiKeyRecord, account_allowed_models: Iterable[str] = ()) -> Principal:
        """The key's principal; allowed_models is what both the key and its account allow."""
        return cls(
            account_id=key.account_id,
            api_key_id=key.id,
            allowed_models=_both_allow(frozenset(key.allowed_models), frozenset(account_allowed_models)),
            rpm_limit=key.rpm_limit,
            tpm_limit=key.tpm_limit,
            spend_limit_micros=key.spend_limit_micros,
            expire_time=key.expire_time,
            concurrency_limit=key.concurrency_limit,
        )

    def may_use(self, model: str) -> bool:
        """Whether this key may call model."""
        return not self.allowed_models or model in self.allowed_models


# Stands for "no model at all" where an empty set would mean "every model" (the router
# reads allowed_models directly): it starts with NUL, which no sane model id contains.
NO_MODEL = "\x00no-model"


def _both_allow(key_models: frozenset[str], account_models: frozenset[str]) -> frozenset[str]:
    """The models both lists allow, an empty list allowing every model."""
    if not key_models or not account_models:
        return key_models or account_models
    return (key_models & account_models) or frozenset({NO_MODEL})


def bearer_token(metadata: Metadata | None) -> str | None:
    """The token of the first `authorization: Bearer <token>` metadata entry, if any."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if text.startswith("Bearer "):  # the usual form: one token, no whitespace around or inside it
            token = text[7:]
            if token and token.split() == [token]:
                return token
        match = _BEARER.fullmatch(text)
        return match.group(1) if match else None
    return None


def invalid_api_key() -> GatewayError:
    """The one error for every authentication failure."""
    return GatewayError(Reason.INVALID_API_KEY, INVALID_KEY_MESSAGE)


@dataclass(frozen=True)
class _Cached:
    fetched_at: float
    credential: ApiKeyCredential
    # The key's Principal, built once per fetch (immutable, so every request may share it).
    principal: Principal


class Authenticator:
    """Turns call metadata into a Principal, or the one INVALID_API_KEY error.

    One per process; safe to share between tasks on one event loop.
    """

    def __init__(
        self,
        store: KeyLookup,
        pepper: str,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> None:
        self._store = store
        self._pepper = pepper
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._now = now
        self._max_entries = max_entries
        self._cache: OrderedDict[str, _Cached] = OrderedDict()

    async def authenticate(self, metadata: Metadata | None) -> Principal:
        """The caller's Principal; raises GatewayError(INVALID_API_KEY) otherwise."""
        token = bearer_token(metadata)
        key_id = parse_key(token) if token is not None else None
        if token is None or key_id is None:
            raise invalid_api_key()
        digest = hash_key(token, self._pepper)  # before the lookup: same work for known and unknown ids
        cached = self._cache.get(key_id)
        if cached is None or self._clock() - cached.fetched_at >= self._cache_seconds:
            cached = await self._fetch(key_id)
            if cached is None:
                raise invalid_api_key()
        credential = cached.credential
        if not hmac.compare_digest(credential.key_hash, digest):
            raise invalid_api_key()
        key = credential.key
        if key.revoked_at is not None or (key.expire_time is not None and key.expire_time <= self._now()):
            raise invalid_api_key()
        return cached.principal

    async def _fetch(self, key_id: str) -> _Cached | None:
        """The key's credential from the store, cached if it may authenticate; None if unknown or revoked."""
        credential = await self._store.get_api_key_for_auth(key_id)
        # Unknown and revoked keys are not cached, so guessing ids cannot fill the cache.
        if credential is None or credential.key.revoked_at is not None:
            self._cache.pop(key_id, None)
            return None
        entry = _Cached(self._clock(), credential, Principal.from_key(credential.key, credential.account_allowed_models))
        self._cache[key_id] = entry
        self._cache.move_to_end(key_id)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return entry
