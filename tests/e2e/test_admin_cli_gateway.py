"""`tollgate admin` against a whole running gateway that has served real requests through the facade.

Usage summaries and prices need configured models and settled requests, so
these run on tests/gateway_support.py's gateway: requests go through the
official openai SDK, the CLI reads the books back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import grpc
import openai
import pytest
from click.testing import CliRunner, Result

from admin.cli import admin_group
from gateway_core.pb.gateway.admin.v1 import admin_pb2, admin_pb2_grpc
from gateway_core.pb.gateway.v1 import metering_pb2, metering_pb2_grpc
from tests.gateway_support import ADMIN_TOKEN, RunningGateway, running_gateway, settings_for

TOLLGATE = [sys.executable, "-c", "from gateway_core.cli import main; main()"]


@dataclass
class Served:
    """A gateway and one account that made three chat requests."""

    gateway: RunningGateway
    account_id: str
    key_id: str
    secret: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    settings = settings_for(tmp_path_factory.mktemp("admin-gw"))
    with running_gateway(settings) as gateway:
        account_id = json.loads(cli(gateway, "accounts", "create", "Usage team", "--json").stdout)["account"]["id"]
        cli(gateway, "topup", account_id, "5", "--request-id", "seed")
        created = json.loads(cli(gateway, "keys", "create", account_id, "--name", "sdk", "--json").stdout)
        secret = created["secret"]
        with openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=secret, max_retries=0) as client:
            ask = [{"role": "user", "content": "Hello there"}]
            client.chat.completions.create(model="mock-chat", messages=ask)  # type: ignore[arg-type]
            client.chat.completions.create(model="mock-echo", messages=ask)  # type: ignore[arg-type]
            for _ in client.chat.completions.create(model="mock-chat", messages=ask, stream=True):  # type: ignore[arg-type]
                pass
        yield Served(gateway, account_id, created["api_key"]["id"], secret)


def cli(gateway: RunningGateway, *args: str) -> Result:
    result = CliRunner().invoke(admin_group, ["--address", gateway.grpc_target, *args],
                                env={"TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN})
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _usage_records(served: Served) -> list[metering_pb2.UsageRecord]:
    with grpc.insecure_channel(served.gateway.grpc_target) as channel:
        return list(metering_pb2_grpc.MeteringServiceStub(channel).ListUsageRecords(
            metering_pb2.ListUsageRecordsRequest(page_size=100),
            metadata=(("authorization", f"Bearer {served.secret}"),)).usage_records)


def test_usage_totals_per_model_and_day_match_the_usage_records(served: Served) -> None:
    records = _usage_records(served)
    assert len(records) == 3
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    usages = json.loads(cli(served.gateway, "usage", "--account", served.account_id, "--json").stdout)["usages"]
    assert [(u["day"], u["model"], u["request_count"]) for u in usages] == [
        (today, "mock-chat", 2), (today, "mock-echo", 1)
    ]
    for usage in usages:
        mine = [r for r in records if r.model == usage["model"]]
        assert usage["cost_micros"] == sum(r.cost_micros for r in mine) > 0
        assert usage["prompt_tokens"] == sum(r.prompt_tokens for r in mine)
        assert usage["completion_tokens"] == sum(r.completion_tokens for r in mine)

    lines = cli(served.gateway, "usage", "--account", served.account_id).stdout.splitlines()
    assert lines[0].split() == ["DAY", "MODEL", "REQUESTS", "PROMPT", "TOKENS", "COMPLETION", "TOKENS", "COST"]
    total_micros = sum(r.cost_micros for r in records)
    assert lines[-1].split()[0:2] == ["total", "3"]
    assert lines[-1].split()[-1] == f"${total_micros // 1_000_000}.{total_micros % 1_000_000:06d}"

    everyone = json.loads(cli(served.gateway, "usage", "--json").stdout)["usages"]
    assert sum(u["request_count"] for u in everyone) >= 3
    assert json.loads(cli(served.gateway, "usage", "--since", "2999-01-01", "--json").stdout) == {"usages": []}
    window = cli(served.gateway, "usage", "--since", today, "--until", today, "--account", served.account_id, "--json")
    assert json.loads(window.stdout)["usages"] == usages


def test_prices_lists_every_configured_model_with_routes(served: Served) -> None:
    models = json.loads(cli(served.gateway, "prices", "--json").stdout)["models"]
    assert [m["model"] for m in models] == ["mock-chat", "mock-echo"]
    chat = models[0]
    assert chat["input_price_micros"] == 100_000 and chat["output_price_micros"] == 400_000
    assert chat["routes"] == [{"provider": "mock", "upstream_model": "chat"}]
    assert "cached_input_price_micros" not in chat
    table = cli(served.gateway, "prices").stdout.splitlines()
    assert table[0].split()[0] == "MODEL"
    assert table[1].split()[:3] == ["mock-chat", "$0.100000", "$0.400000"] and "mock/chat" in table[1]


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


def _arguments(served: Served, command: tuple[str, ...], spare_key: str) -> list[str]:
    account, key = served.account_id, served.key_id
    return {
        ("accounts", "create"): ["Scripted"],
        ("accounts", "list"): [],
        ("accounts", "show"): [account],
        ("accounts", "update"): [account, "--rpm", "6000"],
        ("accounts", "ledger"): [account],
        ("ledger",): [account, "--limit", "5"],
        ("keys", "create"): [account, "--name", "script"],
        ("keys", "update"): [key, "--rpm", "600"],
        ("keys", "list"): ["--account", account],
        ("keys", "show"): [key],
        ("keys", "revoke"): [spare_key],
        ("topup",): [account, "0.01", "--request-id", "json-topup"],
        ("usage",): ["--account", account],
        ("prices",): [],
    }[command]


def test_every_command_takes_json_at_the_end_and_prints_parseable_json(served: Served) -> None:
    spare = json.loads(cli(served.gateway, "keys", "create", served.account_id, "--json").stdout)["api_key"]["id"]
    commands = list(_commands(admin_group))
    assert len(commands) >= 13
    for command in commands:
        result = cli(served.gateway, *command, *_arguments(served, command, spare), "--json")
        parsed: Any = json.loads(result.stdout)
        assert isinstance(parsed, dict) and parsed, command
    ledger = json.loads(cli(served.gateway, "ledger", served.account_id, "--json").stdout)["entries"]
    assert ledger[0]["request_id"] == "json-topup"


def _subprocess(gateway: RunningGateway, *args: str, token: str = ADMIN_TOKEN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOLLGATE_ADMIN_TOKEN": token}
    return subprocess.run([*TOLLGATE, "admin", "--address", gateway.grpc_target, *args],
                          capture_output=True, text=True, env=env, timeout=60, cwd=Path(__file__).parent)


def test_the_real_command_reports_errors_in_one_line_with_a_non_zero_exit(served: Served) -> None:
    missing = _subprocess(served.gateway, "usage", "--account", "acct_missing")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip().startswith("Error: ") and len(missing.stderr.strip().splitlines()) == 1
    assert missing.stderr.strip() == "Error: account 'acct_missing' does not exist (NOT_FOUND) [param: account_id]"

    wrong_token = _subprocess(served.gateway, "prices", token="not-the-admin-token-at-all")
    assert wrong_token.returncode == 1 and "UNAUTHENTICATED" in wrong_token.stderr
    assert len(wrong_token.stderr.strip().splitlines()) == 1

    bad_day = _subprocess(served.gateway, "usage", "--since", "yesterday")
    assert bad_day.returncode == 2 and "is not a day like" in bad_day.stderr and "Traceback" not in bad_day.stderr

    listed = _subprocess(served.gateway, "keys", "list", "--account", served.account_id, "--json")
    assert listed.returncode == 0
    assert served.key_id in [k["id"] for k in json.loads(listed.stdout)["api_keys"]]
    assert served.secret not in listed.stdout, "a key's secret is printed once, at creation only"


def test_summarize_usage_refuses_a_window_that_ends_before_it_starts(served: Served) -> None:
    request = admin_pb2.SummarizeUsageRequest(account_id=served.account_id)
    request.start_time.FromSeconds(2_000_000_000)
    request.end_time.FromSeconds(1_000_000_000)
    with grpc.insecure_channel(served.gateway.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            admin_pb2_grpc.AdminServiceStub(channel).SummarizeUsage(
                request, metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "end_time" in (refused.value.details() or "")
    backwards = CliRunner().invoke(admin_group, ["--address", served.gateway.grpc_target, "usage",
                                                 "--since", "2026-02-01", "--until", "2026-01-01"],
                                   env={"TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN})
    assert backwards.exit_code == 2 and "--until is before --since" in backwards.output
