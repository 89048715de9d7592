"""How `tollgate admin` prints: aligned tables and key/value lines for people, JSON for scripts.

Money is shown as USD with 6 decimals by integer arithmetic, and typed USD is
parsed with Decimal, never through float.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC
from decimal import Decimal, InvalidOperation
from typing import Any

import click
from google.protobuf import json_format, message, timestamp_pb2

from gateway_core.pb.gateway.admin.v1 import admin_pb2 as pb

MICROS_PER_USD = 1_000_000


def json_mode() -> bool:
    return bool(click.get_current_context().obj["json"])


def emit_json(value: message.Message | dict[str, Any]) -> None:
    if isinstance(value, message.Message):
        value = to_dict(value)
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def to_dict(msg: message.Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True, unquote_int64_if_possible=True
    )


def usd(micros: int) -> str:
    """Integer micro-USD as "$1.234567" (integer arithmetic only)."""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{'-' if micros < 0 else ''}${whole}.{frac:06d}"


def parse_usd(text: str, *, positive: bool) -> int:
    """A USD amount typed by a human to integer micro-USD; never through float."""
    try:
        micros = Decimal(text.strip().lstrip("$")) * MICROS_PER_USD
    except InvalidOperation:
        raise click.BadParameter(f"{text!r} is not a USD amount like 12.50") from None
    if not micros.is_finite() or micros != micros.to_integral_value():
        raise click.BadParameter(f"{text!r} is not a USD amount with at most 6 decimals")
    if micros < 0 or (positive and micros == 0):
        raise click.BadParameter(f"{text!r} must be {'positive' if positive else 'zero or positive'}")
    return int(micros)


def when(ts: timestamp_pb2.Timestamp, present: bool = True) -> str:
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ") if present else "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    for row in (headers, *rows):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def details(pairs: Sequence[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        click.echo(f"{key.ljust(width)}  {value}")


def account_pairs(a: pb.Account) -> list[tuple[str, str]]:
    return [
        ("id", a.id),
        ("name", a.display_name),
        ("balance", usd(a.balance_micros)),
        ("held", usd(a.held_micros)),
        ("available", usd(a.balance_micros - a.held_micros)),
        ("models", ",".join(a.allowed_models) or "all"),
        ("rpm limit", str(a.rpm_limit or "none")),
        ("tpm limit", str(a.tpm_limit or "none")),
        ("concurrency limit", str(a.concurrency_limit or "none")),
        ("monthly budget", usd(a.monthly_budget_micros) if a.monthly_budget_micros else "none"),
        ("spent this month", usd(a.budget_spent_micros)),
        ("created", when(a.create_time)),
    ]


def key_pairs(k: pb.ApiKey) -> list[tuple[str, str]]:
    return [
        ("id", k.id),
        ("account", k.account_id),
        ("name", k.display_name or "-"),
        ("state", pb.ApiKeyState.Name(k.state).removeprefix("API_KEY_STATE_").lower()),
        ("key", k.redacted_secret),
        ("models", ",".join(k.allowed_models) or "all"),
        ("rpm limit", str(k.rpm_limit or "none")),
        ("tpm limit", str(k.tpm_limit or "none")),
        ("concurrency limit", str(k.concurrency_limit or "none")),
        ("spend limit", usd(k.spend_limit_micros) if k.spend_limit_micros else "none"),
        ("expires", when(k.expire_time, k.HasField("expire_time"))),
        ("created", when(k.create_time)),
        ("revoked", when(k.revoke_time, k.HasField("revoke_time"))),
    ]


def show(reply: message.Message, pairs: list[tuple[str, str]]) -> None:
    """Prints one object: the whole reply as JSON, or key/value lines."""
    emit_json(reply) if json_mode() else details(pairs)
