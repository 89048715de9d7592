"""API key rows: create (returning the secret once), read, page, update, revoke.

Plain functions on a Session. Only the HMAC of a key is stored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, or_, update
from sqlmodel import Session, col, select

from gateway_core import keys
from gateway_core.errors import GatewayError, Reason, invalid_request
from gateway_core.store.accounts import check_display_name, load_account
from gateway_core.store.models import Account, ApiKey
from gateway_core.store.paging import cursor_time, decode_token, encode_token, page_size
from gateway_core.store.records import ApiKeyCredential, ApiKeyRecord

MAX_ALLOWED_MODELS = 1000
MAX_MODEL_NAME = 200


@dataclass(frozen=True)
class ApiKeySettings:
    """The caller-chosen parts of a key; validated by validate()."""

    display_name: str = ""
    allowed_models: tuple[str, ...] = ()
    rpm_limit: int = 0
    tpm_limit: int = 0
    spend_limit_micros: int = 0
    expire_time: datetime | None = None
    concurrency_limit: int = 0


@dataclass(frozen=True)
class ApiKeyUpdate:
    """Changes to a key; None leaves a field as it is."""

    display_name: str | None = None
    allowed_models: tuple[str, ...] | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    spend_limit_micros: int | None = None
    expire_time: datetime | None = None
    clear_expire_time: bool = False
    concurrency_limit: int | None = None


def check_models(models: Iterable[str]) -> tuple[str, ...]:
    """Model ids without duplicates, in order; each must be a non-empty string."""
    result: dict[str, None] = {}
    for model in models:
        if not model.strip() or len(model) > MAX_MODEL_NAME:
            raise invalid_request("allowed_models entries must be non-empty model ids", param="allowed_models")
        result[model] = None
    if len(result) > MAX_ALLOWED_MODELS:
        raise invalid_request(f"allowed_models has more than {MAX_ALLOWED_MODELS} entries", param="allowed_models")
    return tuple(result)


def check_limit(value: int, param: str) -> int:
    """A limit where 0 means none; negative values are refused."""
    if value < 0:
        raise invalid_request(f"{param} must be 0 (no limit) or positive", param=param)
    return value


def check_expire_time(value: datetime, now: datetime) -> datetime:
    """An expiry that is aware and in the future (revoke a key to end it now)."""
    if value.tzinfo is None:
        raise invalid_request("expire_time needs a time zone", param="expire_time")
    if value <= now:
        raise invalid_request("expire_time must be in the future", param="expire_time")
    return value.astimezone(UTC)


def key_not_found(key_id: str) -> GatewayError:
    """The NOT_FOUND error for an unknown key id."""
    return GatewayError(Reason.NOT_FOUND, f"API key {key_id!r} does not exist", param="api_key_id")


def _load(session: Session, key_id: str) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise key_not_found(key_id)
    return row


def create_api_key(
    session: Session, account_id: str, settings: ApiKeySettings, pepper: str
) -> tuple[ApiKeyRecord, str]:
    """Inserts a key for an existing account; returns it and its secret (shown once)."""
    now = datetime.now(UTC)
    row = ApiKey(
        id="",
        account_id=account_id,
        display_name=check_display_name(settings.display_name, required=False),
        key_hash="",
        allowed_models=list(check_models(settings.allowed_models)),
        rpm_limit=check_limit(settings.rpm_limit, "rpm_limit"),
        tpm_limit=check_limit(settings.tpm_limit, "tpm_limit"),
        spend_limit_micros=check_limit(settings.spend_limit_micros, "spend_limit_micros"),
        expire_time=None if settings.expire_time is None else check_expire_time(settings.expire_time, now),
        created_at=now,
        redacted="",
        concurrency_limit=check_limit(settings.concurrency_limit, "concurrency_limit"),
    )
    load_account(session, account_id)
    key_id, secret = keys.generate_key()
    while session.get(ApiKey, key_id) is not None:  # 71 random bits: practically never
        key_id, secret = keys.generate_key()
    row.id, row.key_hash, row.redacted = key_id, keys.hash_key(secret, pepper), keys.redact(secret)
    session.add(row)
    session.flush()
    return ApiKeyRecord.from_row(row), secret


def get_api_key(session: Session, key_id: str) -> ApiKeyRecord:
    """One key, or NOT_FOUND."""
    return ApiKeyRecord.from_row(_load(session, key_id))


def get_api_key_for_auth(session: Session, key_id: str) -> ApiKeyCredential | None:
    """The key, its stored hash and its account's allowed models, or None: two primary-key lookups."""
    row = session.get(ApiKey, key_id)
    if row is None:
        return None
    account = session.get(Account, row.account_id)
    account_models = tuple(account.allowed_models) if account is not None else ()
    return ApiKeyCredential(ApiKeyRecord.from_row(row), row.key_hash, account_models)


def list_api_keys(
    session: Session, account_id: str | None, requested_size: int, token: str
) -> tuple[list[ApiKeyRecord], str]:
    """A page of keys (of one account, if given), oldest first, and the next token."""
    size = page_size(requested_size)
    query = select(ApiKey).order_by(col(ApiKey.created_at), col(ApiKey.id)).limit(size + 1)
    if account_id:
        load_account(session, account_id)
        query = query.where(col(ApiKey.account_id) == account_id)
    cursor = decode_token(token, (str, str))
    if cursor is not None:
        after_time, after_id = cursor_time(str(cursor[0])), str(cursor[1])
        query = query.where(
            or_(
                col(ApiKey.created_at) > after_time,
                and_(col(ApiKey.created_at) == after_time, col(ApiKey.id) > after_id),
            )
        )
    rows = list(session.exec(query))
    page = [ApiKeyRecord.from_row(row) for row in rows[:size]]
    more = len(rows) > size
    return page, encode_token(page[-1].created_at.isoformat(), page[-1].id) if more else ""


def update_api_key(session: Session, key_id: str, update: ApiKeyUpdate) -> ApiKeyRecord:
    """Applies the changes given; returns the key."""
    if update.clear_expire_time and update.expire_time is not None:
        raise invalid_request("set expire_time or clear_expire_time, not both", param="expire_time")
    row = _load(session, key_id)
    if update.display_name is not None:
        row.display_name = check_display_name(update.display_name, required=False)
    if update.allowed_models is not None:
        row.allowed_models = list(check_models(update.allowed_models))
    if update.rpm_limit is not None:
        row.rpm_limit = check_limit(update.rpm_limit, "rpm_limit")
    if update.tpm_limit is not None:
        row.tpm_limit = check_limit(update.tpm_limit, "tpm_limit")
    if update.spend_limit_micros is not None:
        row.spend_limit_micros = check_limit(update.spend_limit_micros, "spend_limit_micros")
    if update.concurrency_limit is not None:
        row.concurrency_limit = check_limit(update.concurrency_limit, "concurrency_limit")
    if update.expire_time is not None:
        row.expire_time = check_expire_time(update.expire_time, datetime.now(UTC))
    if update.clear_expire_time:
        row.expire_time = None
    session.add(row)
    session.flush()
    return ApiKeyRecord.from_row(row)


def revoke_api_key(session: Session, key_id: str) -> ApiKeyRecord:
    """Revokes a key for good; revoking again keeps the first revocation time."""
    # Conditional, so concurrent revocations on any backend agree on one time.
    session.exec(
        update(ApiKey)
        .where(col(ApiKey.id) == key_id, col(ApiKey.revoked_at).is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    row = session.get(ApiKey, key_id, populate_existing=True)
    if row is None:
        raise key_not_found(key_id)
    return ApiKeyRecord.from_row(row)
