"""`tollgate admin`: a human CLI over gateway.admin.v1.AdminService.

The admin token comes from TOLLGATE_ADMIN_TOKEN only (never a flag, so it
stays out of shell history and `ps`). Money is typed in USD, parsed with
Decimal into integer micro-USD, and shown as USD with 6 decimals.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import grpc
from google.protobuf import message

from admin.cli_format import (
    account_pairs,
    details,
    emit_json,
    json_mode,
    key_pairs,
    parse_usd,
    show,
    table,
    to_dict,
    usd,
    when,
)
from gateway_core.errors import error_info
from gateway_core.pb.gateway.admin.v1 import admin_pb2 as pb
from gateway_core.pb.gateway.admin.v1 import admin_pb2_grpc

TOKEN_ENV = "TOLLGATE_ADMIN_TOKEN"


class AdminClient:
    """A blocking AdminService client bound to one address and token."""

    def __init__(self, address: str, token: str, timeout: float) -> None:
        self.address = address
        self._channel = grpc.insecure_channel(address)
        self._stub = admin_pb2_grpc.AdminServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout

    def call(self, method: str, request: message.Message, hint: str = "") -> Any:
        """Calls one RPC; any failure becomes a one-line ClickException (exit code 1)."""
        try:
            return getattr(self._stub, method)(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as err:
            raise click.ClickException(_describe(err, self.address) + hint) from None

    def close(self) -> None:
        self._channel.close()


def _describe(err: grpc.RpcError, address: str) -> str:
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the Tollgate core at {address} (is it running? see --address)"
    details = err.details() if isinstance(err, grpc.Call) else None
    text = f"{details or 'request failed'} ({code.name})"
    info = error_info(err)
    if info is not None and info.metadata.get("param"):
        text += f" [param: {info.metadata['param']}]"
    return text


def _client() -> AdminClient:
    ctx = click.get_current_context()
    # The admin group's options, inherited by every subcommand's context. Not find_root():
    # under `tollgate admin` the root is the `tollgate` group, which has no such object.
    root = ctx.obj
    if "client" not in root:
        token = os.environ.get(TOKEN_ENV, "")
        if not token:
            raise click.ClickException(f"{TOKEN_ENV} is not set: export the core's admin token first")
        client = AdminClient(root["address"], token, root["timeout"])
        ctx.find_root().call_on_close(client.close)
        root["client"] = client
    return root["client"]  # type: ignore[no-any-return]


def _list_all(method: str, request_type: type[message.Message], field: str, **filters: str) -> list[Any]:
    """Every item of a paged List RPC, following next_page_token to the end."""
    client, items, token = _client(), [], ""
    while True:
        reply = client.call(method, request_type(page_size=1000, page_token=token, **filters))
        items.extend(getattr(reply, field))
        token = reply.next_page_token
        if not token:
            return items


@click.group(name="admin")
@click.option(
    "--address",
    envvar="TOLLGATE_GRPC_ADDRESS",
    default="127.0.0.1:50051",
    show_default=True,
    show_envvar=True,
    help="HOST:PORT of the core's gRPC server.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (proto field names) instead of tables.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for each call.")
@click.pass_context
def admin_group(ctx: click.Context, address: str, as_json: bool, timeout: float) -> None:
    """Manage accounts, API keys, balances, usage and prices through the core's admin API.

    Reads the admin token from TOLLGATE_ADMIN_TOKEN. Tables by default; --json
    (here or after any command) prints the API's JSON for scripts. Errors are one
    line on stderr and exit 1.

    \b
    Examples:
      export TOLLGATE_ADMIN_TOKEN=...
      tollgate admin accounts create "Research team"
      tollgate admin topup acct_123 25.00
      tollgate admin keys create acct_123 --name laptop --models gpt-4o-mini
      tollgate admin usage --since 2026-01-01
      tollgate admin prices
      tollgate admin keys list --account acct_123 --json
    """
    ctx.obj = {"address": address, "json": as_json, "timeout": timeout}


@admin_group.group()
def accounts() -> None:
    """Create, list and inspect accounts.

    \b
    Example:
      tollgate admin accounts list
    """


@accounts.command("create")
@click.argument("name")
@click.option("--rpm", default=0, type=click.IntRange(min=0), help="Requests per minute over all keys (0: no limit).")
@click.option("--tpm", default=0, type=click.IntRange(min=0), help="Tokens per minute over all keys (0: no limit).")
@click.option("--concurrency", default=0, type=click.IntRange(min=0), help="Requests in flight at once (0: no limit).")
@click.option("--monthly-budget-usd", default="0", help="Most the account may spend per calendar month, UTC (0: no limit).")
@click.option("--models", default="", help="Comma-separated model ids the account's keys may use (default: all).")
def accounts_create(name: str, rpm: int, tpm: int, concurrency: int, monthly_budget_usd: str, models: str) -> None:
    """Create an account with a zero balance (and optional limits); prints its id.

    \b
    Example:
      tollgate admin accounts create "Research team" --rpm 600 --monthly-budget-usd 200
    """
    request = pb.CreateAccountRequest(
        display_name=name,
        rpm_limit=rpm,
        tpm_limit=tpm,
        concurrency_limit=concurrency,
        monthly_budget_micros=parse_usd(monthly_budget_usd, positive=False),
        allowed_models=[m.strip() for m in models.split(",") if m.strip()],
    )
    reply = _client().call("CreateAccount", request)
    show(reply, account_pairs(reply.account))


@accounts.command("update")
@click.argument("account_id")
@click.option("--name", default=None, help="A new human name.")
@click.option("--rpm", default=None, type=click.IntRange(min=0), help="Requests per minute over all keys (0: no limit).")
@click.option("--tpm", default=None, type=click.IntRange(min=0), help="Tokens per minute over all keys (0: no limit).")
@click.option("--concurrency", default=None, type=click.IntRange(min=0), help="Requests in flight at once (0: no limit).")
@click.option("--monthly-budget-usd", default=None, help="Most the account may spend per calendar month, UTC (0: no limit).")
@click.option("--models", default=None, help='Comma-separated model ids the account\'s keys may use ("" for all).')
def accounts_update(
    account_id: str, name: str | None, rpm: int | None, tpm: int | None, concurrency: int | None,
    monthly_budget_usd: str | None, models: str | None,
) -> None:
    """Change an account's name and limits; options not given stay as they are.

    \b
    Example:
      tollgate admin accounts update acct_123 --rpm 120 --concurrency 4 --monthly-budget-usd 50
    """
    request = pb.UpdateAccountRequest(account_id=account_id)
    _set_shared_updates(request, name=name, models=models, rpm=rpm, tpm=tpm, concurrency=concurrency)
    if monthly_budget_usd is not None:
        request.monthly_budget_micros = parse_usd(monthly_budget_usd, positive=False)
    reply = _client().call("UpdateAccount", request)
    show(reply, account_pairs(reply.account))


@accounts.command("list")
def accounts_list() -> None:
    """List every account, oldest first, with its balance.

    \b
    Example:
      tollgate admin accounts list
    """
    items = _list_all("ListAccounts", pb.ListAccountsRequest, "accounts")
    if json_mode():
        return emit_json({"accounts": [to_dict(a) for a in items]})
    rows = [(a.id, a.display_name, usd(a.balance_micros), usd(a.held_micros), when(a.create_time)) for a in items]
    table(("ID", "NAME", "BALANCE", "HELD", "CREATED"), rows)


@accounts.command("show")
@click.argument("account_id")
def accounts_show(account_id: str) -> None:
    """Show one account and its balance.

    \b
    Example:
      tollgate admin accounts show acct_123
    """
    reply = _client().call("GetAccount", pb.GetAccountRequest(account_id=account_id))
    show(reply, account_pairs(reply.account))


@accounts.command("ledger")
@click.argument("account_id")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000), help="Newest entries to show.")
def accounts_ledger(account_id: str, limit: int) -> None:
    """Show an account's newest ledger entries (top-ups and charges).

    \b
    Example:
      tollgate admin accounts ledger acct_123 --limit 50
    """
    request = pb.ListLedgerEntriesRequest(account_id=account_id, page_size=limit)
    reply = _client().call("ListLedgerEntries", request)
    if json_mode():
        return emit_json(reply)
    rows = [
        (
            str(e.id),
            pb.LedgerEntryKind.Name(e.kind).removeprefix("LEDGER_ENTRY_KIND_").lower(),
            usd(e.amount_micros),
            usd(e.balance_after_micros),
            e.request_id,
            e.note,
            when(e.create_time),
        )
        for e in reply.entries
    ]
    table(("ID", "KIND", "AMOUNT", "BALANCE AFTER", "REQUEST ID", "NOTE", "TIME"), rows)


@admin_group.group()
def keys() -> None:
    """Create, list, inspect, limit (update) and revoke API keys.

    \b
    Example:
      tollgate admin keys list --account acct_123
    """


def _parse_expiry(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time like 2026-01-31T00:00:00Z") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


@keys.command("create")
@click.argument("account_id")
@click.option("--name", default="", help="A human name for the key.")
@click.option("--models", default="", help="Comma-separated model ids the key may use (default: all).")
@click.option("--rpm", default=0, type=click.IntRange(min=0), help="Requests per minute (0: no limit).")
@click.option("--tpm", default=0, type=click.IntRange(min=0), help="Tokens per minute (0: no limit).")
@click.option("--expires", callback=_parse_expiry, help="ISO 8601 expiry time (UTC unless it has an offset).")
@click.option("--spend-limit-usd", default="0", help="Most the key may spend in total, in USD (0: no limit).")
@click.option("--concurrency", default=0, type=click.IntRange(min=0), help="Requests in flight at once (0: no limit).")
def keys_create(
    account_id: str, name: str, models: str, rpm: int, tpm: int, expires: datetime | None, spend_limit_usd: str,
    concurrency: int,
) -> None:
    """Create an API key for an account and print its secret, once.

    \b
    Example:
      tollgate admin keys create acct_123 --name laptop \\
          --models gpt-4o-mini,mock-chat --rpm 60 --spend-limit-usd 10 --expires 2026-12-31T00:00:00Z
    """
    request = pb.CreateApiKeyRequest(
        account_id=account_id,
        display_name=name,
        rpm_limit=rpm,
        tpm_limit=tpm,
        allowed_models=[m.strip() for m in models.split(",") if m.strip()],
        spend_limit_micros=parse_usd(spend_limit_usd, positive=False),
        concurrency_limit=concurrency,
    )
    if expires is not None:
        request.expire_time.FromDatetime(expires)
    reply = _client().call("CreateApiKey", request)
    if json_mode():
        return emit_json(reply)
    details(key_pairs(reply.api_key))
    click.echo(f"\nsecret: {reply.secret}")
    click.echo("This secret is shown only once and cannot be retrieved again: store it now.", err=True)


@keys.command("update")
@click.argument("key_id")
@click.option("--name", default=None, help="A new human name.")
@click.option("--models", default=None, help='Comma-separated model ids the key may use ("" for all).')
@click.option("--rpm", default=None, type=click.IntRange(min=0), help="Requests per minute (0: no limit).")
@click.option("--tpm", default=None, type=click.IntRange(min=0), help="Tokens per minute (0: no limit).")
@click.option("--expires", callback=_parse_expiry, help="New ISO 8601 expiry time.")
@click.option("--no-expiry", is_flag=True, help="Remove the expiry time.")
@click.option("--spend-limit-usd", default=None, help="Most the key may spend in total, in USD (0: no limit).")
@click.option("--concurrency", default=None, type=click.IntRange(min=0), help="Requests in flight at once (0: no limit).")
def keys_update(
    key_id: str, name: str | None, models: str | None, rpm: int | None, tpm: int | None,
    expires: datetime | None, no_expiry: bool, spend_limit_usd: str | None, concurrency: int | None,
) -> None:
    """Change an API key's name, allowed models and limits; options not given stay as they are.

    \b
    Example:
      tollgate admin keys update AbCdEf123456 --rpm 120 --spend-limit-usd 25
      tollgate admin keys update AbCdEf123456 --models "" --no-expiry
    """
    if expires is not None and no_expiry:
        raise click.UsageError("--expires and --no-expiry contradict each other")
    request = pb.UpdateApiKeyRequest(api_key_id=key_id, clear_expire_time=no_expiry)
    _set_shared_updates(request, name=name, models=models, rpm=rpm, tpm=tpm, concurrency=concurrency)
    if spend_limit_usd is not None:
        request.spend_limit_micros = parse_usd(spend_limit_usd, positive=False)
    if expires is not None:
        request.expire_time.FromDatetime(expires)
    reply = _client().call("UpdateApiKey", request)
    show(reply, key_pairs(reply.api_key))


@keys.command("list")
@click.option("--account", "account_id", default="", help="Only the keys of this account.")
def keys_list(account_id: str) -> None:
    """List API keys (never their secrets), oldest first.

    \b
    Example:
      tollgate admin keys list --account acct_123
    """
    items = _list_all("ListApiKeys", pb.ListApiKeysRequest, "api_keys", account_id=account_id)
    if json_mode():
        return emit_json({"api_keys": [to_dict(k) for k in items]})
    rows = [[value for _, value in key_pairs(k)] for k in items]
    table(("ID", "ACCOUNT", "NAME", "STATE", "KEY"), [row[:5] for row in rows])


@keys.command("show")
@click.argument("key_id")
def keys_show(key_id: str) -> None:
    """Show one API key, its limits and state.

    \b
    Example:
      tollgate admin keys show AbCd12Ef34Gh
    """
    reply = _client().call("GetApiKey", pb.GetApiKeyRequest(api_key_id=key_id))
    show(reply, key_pairs(reply.api_key))


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke an API key for good (takes effect within seconds everywhere).

    \b
    Example:
      tollgate admin keys revoke AbCd12Ef34Gh
    """
    reply = _client().call("RevokeApiKey", pb.RevokeApiKeyRequest(api_key_id=key_id))
    show(reply, key_pairs(reply.api_key))


@admin_group.command()
@click.argument("account_id")
@click.argument("amount_usd")
@click.option("--request-id", default=None, help="Idempotency key; a retry with the same id credits once.")
@click.option("--note", default="", help="Free text kept on the ledger entry (e.g. an invoice number).")
def topup(account_id: str, amount_usd: str, request_id: str | None, note: str) -> None:
    """Credit an account with AMOUNT_USD (exact, up to 6 decimals).

    \b
    Example:
      tollgate admin topup acct_123 25.00 --request-id invoice-2041 --note "invoice 2041"
    """
    amount = parse_usd(amount_usd, positive=True)
    hint = ""
    if request_id is None:
        request_id = f"topup-{uuid.uuid4().hex}"
        hint = f"; if unsure whether it was credited, retry with --request-id {request_id}"
    request = pb.TopUpAccountRequest(account_id=account_id, amount_micros=amount, request_id=request_id, note=note)
    reply = _client().call("TopUpAccount", request, hint=hint)
    if json_mode():
        return emit_json(reply)
    click.echo(f"credited {usd(reply.entry.amount_micros)} to {reply.account.id} (request id {reply.entry.request_id})")
    click.echo(f"balance  {usd(reply.account.balance_micros)}")


def _parse_day(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a day like 2026-01-31") from None


@admin_group.command()
@click.option("--account", "account_id", default="", help="Only this account (default: every account).")
@click.option("--since", callback=_parse_day, help="First UTC day to include, YYYY-MM-DD.")
@click.option("--until", callback=_parse_day, help="Last UTC day to include, YYYY-MM-DD.")
def usage(account_id: str, since: datetime | None, until: datetime | None) -> None:
    """Show usage totals per UTC day and model: requests, tokens and cost.

    \b
    Examples:
      tollgate admin usage
      tollgate admin usage --account acct_123 --since 2026-01-01 --until 2026-01-31
      tollgate admin usage --json
    """
    if since is not None and until is not None and until < since:
        raise click.BadParameter("--until is before --since", param_hint="--until")
    request = pb.SummarizeUsageRequest(account_id=account_id)
    if since is not None:
        request.start_time.FromDatetime(since)
    if until is not None:
        request.end_time.FromDatetime(until + timedelta(days=1))
    reply = _client().call("SummarizeUsage", request)
    if json_mode():
        return emit_json(reply)
    rows = [
        (u.day, u.model, str(u.request_count), str(u.prompt_tokens), str(u.completion_tokens), usd(u.cost_micros))
        for u in reply.usages
    ]
    if rows:
        rows.append(("total", "", *(str(sum(getattr(u, f) for u in reply.usages)) for f in _COUNTS),
                     usd(sum(u.cost_micros for u in reply.usages))))
    table(("DAY", "MODEL", "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS", "COST"), rows)


_COUNTS = ("request_count", "prompt_tokens", "completion_tokens")


@admin_group.command()
def prices() -> None:
    """List the configured models, their prices (USD per 1M tokens) and routes.

    \b
    Examples:
      tollgate admin prices
      tollgate admin prices --json
    """
    reply = _client().call("ListModelPrices", pb.ListModelPricesRequest())
    if json_mode():
        return emit_json(reply)
    rows = [
        (
            m.model,
            usd(m.input_price_micros),
            usd(m.output_price_micros),
            usd(m.cached_input_price_micros) if m.HasField("cached_input_price_micros") else "-",
            str(m.max_output_tokens),
            ", ".join(f"{r.provider}/{r.upstream_model}" for r in m.routes),
        )
        for m in reply.models
    ]
    table(("MODEL", "INPUT /1M", "OUTPUT /1M", "CACHED INPUT /1M", "MAX OUTPUT", "ROUTES"), rows)


# `tollgate admin ledger ACCOUNT` is the same command as `accounts ledger`, where operators look first.
admin_group.add_command(accounts_ledger, name="ledger")


def _set_shared_updates(
    request: pb.UpdateAccountRequest | pb.UpdateApiKeyRequest,
    *, name: str | None, models: str | None, rpm: int | None, tpm: int | None, concurrency: int | None,
) -> None:
    """Sets the fields accounts and keys share, for the options given (the others stay as they are)."""
    if name is not None:
        request.display_name = name
    if models is not None:
        request.allowed_models.models.extend(m.strip() for m in models.split(",") if m.strip())
        request.allowed_models.SetInParent()  # an empty list still means "set": every model
    if rpm is not None:
        request.rpm_limit = rpm
    if tpm is not None:
        request.tpm_limit = tpm
    if concurrency is not None:
        request.concurrency_limit = concurrency


def _json_flag(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.obj["json"] = True


def _accept_json_everywhere(group: click.Group) -> None:
    """Gives every command its own --json too, so `tollgate admin keys list --json` works."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _accept_json_everywhere(command)
        elif not any(p.name == "json" for p in command.params):
            command.params.append(click.Option(
                ["--json", "json"], is_flag=True, expose_value=False, callback=_json_flag,
                help="Print JSON (proto field names) instead of a table.",
            ))


_accept_json_everywhere(admin_group)

