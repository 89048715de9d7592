"""`tollgate admin` (click) against a real in-process gRPC server on its own thread."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import click
import grpc
import pytest
from click.testing import CliRunner, Result

from admin.cli import admin_group, parse_usd, usd
from gateway_core.pb.gateway.v1 import metering_pb2, metering_pb2_grpc
from tests.store_support import ADMIN_TOKEN, admin_metadata, server_in_thread


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with server_in_thread(tmp_path_factory.mktemp("cli")) as running:
        yield running


def run(address: str, *args: str, token: str | None = ADMIN_TOKEN) -> Result:
    env = {"TOLLGATE_ADMIN_TOKEN": token} if token is not None else {"TOLLGATE_ADMIN_TOKEN": ""}
    return CliRunner().invoke(admin_group, ["--address", address, *args], env=env)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def as_json(address: str, *args: str) -> Any:
    return json.loads(ok(run(address, "--json", *args)))


def failed(result: Result) -> str:
    """Asserts a clean failure: exit 1, one line on stderr, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    return lines[0]


def new_account(address: str, name: str = "Research") -> str:
    return str(as_json(address, "accounts", "create", name)["account"]["id"])


def test_accounts_create_list_show(address: str) -> None:
    out = ok(run(address, "accounts", "create", "Human team"))
    account_id = re.search(r"acct_\w+", out).group(0)  # type: ignore[union-attr]
    assert "Human team" in out and "$0.000000" in out
    listing = ok(run(address, "accounts", "list"))
    assert listing.splitlines()[0].split() == ["ID", "NAME", "BALANCE", "HELD", "CREATED"]
    assert account_id in listing
    assert account_id in [a["id"] for a in as_json(address, "accounts", "list")["accounts"]]
    shown = as_json(address, "accounts", "show", account_id)["account"]
    assert shown["display_name"] == "Human team" and shown["balance_micros"] == 0
    assert "Human team" in ok(run(address, "accounts", "show", account_id))


def test_topup_is_exact_and_idempotent(address: str) -> None:
    account_id = new_account(address)
    out = ok(run(address, "topup", account_id, "2.5", "--request-id", "inv-1", "--note", "invoice 1"))
    assert "$2.500000" in out
    again = as_json(address, "topup", account_id, "2.500000", "--request-id", "inv-1")
    assert again["account"]["balance_micros"] == 2_500_000
    assert again["entry"]["request_id"] == "inv-1" and again["entry"]["note"] == "invoice 1"
    generated = as_json(address, "topup", account_id, "0.000001")
    assert generated["entry"]["request_id"].startswith("topup-")
    assert generated["account"]["balance_micros"] == 2_500_001
    ledger = ok(run(address, "accounts", "ledger", account_id))
    assert "inv-1" in ledger and "top_up" in ledger and "$2.500001" in ledger


@pytest.mark.parametrize("amount", ["abc", "0", "-1", "1.0000001", "nan", "inf"])
def test_topup_refuses_bad_amounts(address: str, amount: str) -> None:
    result = run(address, "topup", "acct_whatever", amount)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_usd_parsing_and_formatting_are_exact() -> None:
    assert parse_usd("0.1", positive=True) == 100_000
    assert parse_usd("$12.345678", positive=True) == 12_345_678
    assert parse_usd("0", positive=False) == 0
    assert parse_usd("1e3", positive=True) == 1_000_000_000
    with pytest.raises(click.BadParameter):
        parse_usd("0.0000001", positive=True)
    assert usd(1) == "$0.000001" and usd(-2_500_000) == "-$2.500000" and usd(0) == "$0.000000"


def test_keys_create_list_show_revoke(address: str) -> None:
    account_id = new_account(address)
    result = run(
        address,
        "keys",
        "create",
        account_id,
        "--name",
        "laptop",
        "--models",
        "m1, m2",
        "--rpm",
        "60",
        "--tpm",
        "1000",
        "--expires",
        "2999-01-01T00:00:00Z",
        "--spend-limit-usd",
        "10.5",
    )
    out = ok(result)
    secret = re.search(r"sk-tg-\w+", out.split("secret:")[1]).group(0)  # type: ignore[union-attr]
    assert "shown only once" in result.stderr
    key_id = secret[6:18]
    shown = as_json(address, "keys", "show", key_id)["api_key"]
    assert shown["allowed_models"] == ["m1", "m2"] and shown["rpm_limit"] == 60 and shown["tpm_limit"] == 1000
    assert shown["spend_limit_micros"] == 10_500_000 and shown["expire_time"].startswith("2999-01-01")
    assert shown["state"] == "API_KEY_STATE_ACTIVE" and "secret" not in shown
    assert key_id in ok(run(address, "keys", "list", "--account", account_id))
    assert [k["id"] for k in as_json(address, "keys", "list", "--account", account_id)["api_keys"]] == [key_id]
    with grpc.insecure_channel(address) as channel:
        balance = metering_pb2_grpc.MeteringServiceStub(channel).GetBalance(
            metering_pb2.GetBalanceRequest(), metadata=admin_metadata(secret)
        )
    assert balance.account_id == account_id
    assert "revoked" in ok(run(address, "keys", "revoke", key_id))
    assert as_json(address, "keys", "revoke", key_id)["api_key"]["state"] == "API_KEY_STATE_REVOKED"


def test_keys_create_json_returns_the_secret(address: str) -> None:
    account_id = new_account(address)
    created = as_json(address, "keys", "create", account_id)
    assert created["secret"].startswith("sk-tg-" + created["api_key"]["id"])


def test_server_errors_are_one_clean_line(address: str) -> None:
    line = failed(run(address, "accounts", "show", "acct_missing"))
    assert "does not exist" in line and "NOT_FOUND" in line and "account_id" in line
    line = failed(run(address, "keys", "create", "acct_missing"))
    assert "NOT_FOUND" in line
    assert "invalid admin token" in failed(run(address, "accounts", "list", token="wrong"))


def test_missing_token_is_a_clear_error(address: str) -> None:
    assert "TOLLGATE_ADMIN_TOKEN is not set" in failed(run(address, "accounts", "list", token=None))


def test_unreachable_core_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    line = failed(run(f"127.0.0.1:{port}", "--timeout", "5", "accounts", "list"))
    assert "cannot reach the Tollgate core" in line


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


@pytest.mark.parametrize("path", list(_commands(admin_group)), ids=lambda p: " ".join(p) or "admin")
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(admin_group, [*path, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.stdout and "tollgate admin" in result.stdout


def test_keys_update_changes_only_what_is_given(address: str) -> None:
    account_id = new_account(address)
    created = as_json(address, "keys", "create", account_id, "--name", "ci", "--models", "m1", "--rpm", "10",
                      "--expires", "2999-01-01T00:00:00Z")
    key_id = created["api_key"]["id"]
    updated = as_json(address, "keys", "update", key_id, "--rpm", "120", "--spend-limit-usd", "2.5")["api_key"]
    assert updated["rpm_limit"] == 120 and updated["spend_limit_micros"] == 2_500_000
    assert updated["display_name"] == "ci" and updated["allowed_models"] == ["m1"]
    assert updated["expire_time"].startswith("2999-01-01")
    cleared = as_json(address, "keys", "update", key_id, "--models", "", "--no-expiry")["api_key"]
    assert cleared["allowed_models"] == [] and "expire_time" not in cleared and cleared["rpm_limit"] == 120
    assert "rpm limit" in ok(run(address, "keys", "update", key_id, "--name", "renamed"))
    conflict = run(address, "keys", "update", key_id, "--expires", "2999-01-01T00:00:00Z", "--no-expiry")
    assert conflict.exit_code != 0 and "contradict" in conflict.output


def test_account_limits_are_set_shown_and_changed_only_when_given(address: str) -> None:
    created = as_json(address, "accounts", "create", "Limited", "--rpm", "600", "--monthly-budget-usd", "200")["account"]
    assert created["rpm_limit"] == 600 and created["monthly_budget_micros"] == 200_000_000
    account_id = created["id"]
    updated = as_json(address, "accounts", "update", account_id, "--tpm", "90000", "--concurrency", "4")["account"]
    assert updated["rpm_limit"] == 600 and updated["tpm_limit"] == 90000 and updated["concurrency_limit"] == 4
    assert updated["monthly_budget_micros"] == 200_000_000 and updated["display_name"] == "Limited"
    cleared = as_json(address, "accounts", "update", account_id, "--monthly-budget-usd", "0")["account"]
    assert cleared["monthly_budget_micros"] == 0 and cleared["concurrency_limit"] == 4
    shown = ok(run(address, "accounts", "show", account_id))
    assert "concurrency limit" in shown and "monthly budget" in shown and "spent this month" in shown
    bad = run(address, "accounts", "update", account_id, "--monthly-budget-usd", "-5")
    assert bad.exit_code != 0
    narrowed = as_json(address, "accounts", "update", account_id, "--models", "m1,m2")["account"]
    assert narrowed["allowed_models"] == ["m1", "m2"] and narrowed["tpm_limit"] == 90000
    assert "m1,m2" in ok(run(address, "accounts", "show", account_id))
    widened = as_json(address, "accounts", "update", account_id, "--models", "")["account"]
    assert widened["allowed_models"] == []


def test_key_concurrency_limit_is_set_and_changed(address: str) -> None:
    account_id = new_account(address)
    key = as_json(address, "keys", "create", account_id, "--concurrency", "2")["api_key"]
    assert key["concurrency_limit"] == 2
    updated = as_json(address, "keys", "update", key["id"], "--concurrency", "5")["api_key"]
    assert updated["concurrency_limit"] == 5
    assert "concurrency limit" in ok(run(address, "keys", "show", key["id"]))
