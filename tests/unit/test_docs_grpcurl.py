"""Every grpcurl example in the README and docs/ calls a method that exists, with a body it accepts."""

import re
import shlex
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2  # noqa: F401 - registers grpc.health.v1 in the default pool

from gateway_core.pb.gateway.admin.v1 import admin_pb2  # noqa: F401 - registers the service
from gateway_core.pb.gateway.v1 import chat_pb2, metering_pb2  # noqa: F401 - registers the services

ROOT = Path(__file__).resolve().parents[2]
METHOD = re.compile(r"^([\w.]+)\.(\w+)/(\w+)$")


def _grpcurl_commands() -> list[tuple[str, list[str]]]:
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        joined = page.read_text().replace("\\\n", " ")
        for line in joined.splitlines():
            if line.lstrip().startswith("grpcurl "):
                found.append((page.name, shlex.split(line.split(" #")[0])))
    return found


COMMANDS = [(page, words) for page, words in _grpcurl_commands() if any(METHOD.match(w) for w in words)]


def test_the_docs_have_grpcurl_examples_for_the_admin_operations() -> None:
    methods = {w.rsplit("/", 1)[1] for _, words in COMMANDS for w in words if METHOD.match(w)}
    assert {"CreateAccount", "ListAccounts", "GetAccount", "CreateApiKey", "ListApiKeys", "UpdateApiKey",
            "RevokeApiKey", "TopUpAccount", "ListLedgerEntries", "SummarizeUsage", "ListModelPrices"} <= methods


@pytest.mark.parametrize("page,words", COMMANDS, ids=lambda v: v if isinstance(v, str) else v[-1])
def test_each_grpcurl_example_names_a_real_method_and_a_valid_body(page: str, words: list[str]) -> None:
    target = next(w for w in words if METHOD.match(w))
    service_name, method_name = target.rsplit("/", 1)
    method = descriptor_pool.Default().FindServiceByName(service_name).FindMethodByName(method_name)
    assert method is not None, target
    body = words[words.index("-d") + 1] if "-d" in words else "{}"
    json_format.Parse(body.replace("acct_...", "acct_x"), message_factory.GetMessageClass(method.input_type)())
