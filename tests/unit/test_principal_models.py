"""A key's usable models are what both the key and its account allow."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway_core.auth import Principal
from gateway_core.store.records import ApiKeyRecord


def _key(models: tuple[str, ...]) -> ApiKeyRecord:
    now = datetime.now(UTC)
    return ApiKeyRecord(
        id="k", account_id="a", display_name="", allowed_models=models, rpm_limit=0, tpm_limit=0,
        spend_limit_micros=0, spent_micros=0, expire_time=None, created_at=now, revoked_at=None, redacted="",
    )


@pytest.mark.parametrize(
    ("key_models", "account_models", "allowed", "refused"),
    [
        ((), (), ["x", "y"], []),
        (("x",), (), ["x"], ["y"]),
        ((), ("y",), ["y"], ["x"]),
        (("x", "y"), ("y", "z"), ["y"], ["x", "z"]),
        (("x",), ("y",), [], ["x", "y", ""]),  # disjoint: nothing, not everything
    ],
)
def test_both_lists_must_allow_a_model(
    key_models: tuple[str, ...], account_models: tuple[str, ...], allowed: list[str], refused: list[str]
) -> None:
    principal = Principal.from_key(_key(key_models), account_models)
    assert all(principal.may_use(m) for m in allowed)
    assert not any(principal.may_use(m) for m in refused)
