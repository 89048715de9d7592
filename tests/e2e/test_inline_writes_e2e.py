"""One request at a time through the facade (official openai SDK): its hold and settlement run inline.

The gateway's own counters (Database.writes_run_inline / writes_run_on_thread)
say where each write ran; the account and the rows say what was charged.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from gateway_core.store.inline import InlineGate
from tests.gateway_support import TRANSPORTS, RunningGateway, running_gateway, settings_for
from tests.ledger_support import check_invariants

REQUESTS = 4


@pytest.fixture(scope="module", params=TRANSPORTS)
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    # The lease heartbeat is a write of its own: far apart, so none falls among the requests counted.
    settings = settings_for(
        tmp_path_factory.mktemp("inline"), metering={"reconcile_interval_seconds": 300, "orphan_after_seconds": 600}
    )
    with running_gateway(settings, in_process=request.param == "in_process") as running:
        yield running


def _wait_for_inline_writes(gateway: RunningGateway, at_least: int) -> None:
    """A stream's settlement may land just after its last chunk: waits for it (up to 5 s)."""
    deadline = time.monotonic() + 5
    while gateway.core.store.db.writes_run_inline < at_least and time.monotonic() < deadline:
        time.sleep(0.005)


# The official SDK in a process of its own, one request per line read: in this process its Python code
# would compete for the GIL with the gateway's loop, and the loop's waits for the GIL during an inline
# write would (rightly) make the gateway hand its writes to the thread (store/inline.py).
_CLIENT = """
import sys, openai
base_url, key, stream = sys.argv[1], sys.argv[2], sys.argv[3] == "stream"
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
hello = [{"role": "user", "content": "Hello, inline world!"}]
for _ in sys.stdin:
    if stream:
        chunks = list(client.chat.completions.create(model="mock-chat", messages=hello, stream=True))
        ok = bool(chunks) and chunks[-1].choices[0].finish_reason == "stop"
    else:
        ok = bool(client.chat.completions.create(model="mock-chat", messages=hello).choices[0].message.content)
    print("ok" if ok else "bad", flush=True)
"""


@pytest.mark.parametrize("stream", [False, True])
def test_requests_one_at_a_time_hold_and_settle_inline(gateway: RunningGateway, stream: bool) -> None:
    account_id, _, secret = gateway.create_key(balance_micros=5_000_000)
    db = gateway.core.store.db
    # Counts below are exact: a busy test machine (preempting the loop mid-write) must not close the gate.
    db._inline_gate = InlineGate(slow_seconds=float("inf"))
    before = gateway.account(account_id).balance_micros
    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, f"{gateway.http_url}/v1", secret, "stream" if stream else "unary"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert client.stdin is not None and client.stdout is not None

    def one_request() -> None:
        client.stdin.write("next\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "ok"

    try:
        one_request()  # the first hold opens the writer's connection
        _wait_for_inline_writes(gateway, 1)
        inline, thread = db.writes_run_inline, db.writes_run_on_thread
        for index in range(REQUESTS):
            one_request()
            _wait_for_inline_writes(gateway, inline + 2 * (index + 1))
    finally:
        client.stdin.close()
        client.wait(timeout=30)
        client.stdout.close()
    assert (db.writes_run_inline - inline, db.writes_run_on_thread - thread) == (2 * REQUESTS, 0)
    snapshot = check_invariants(db.engine)  # one usage record per settled hold, sums exact
    assert set(snapshot.holds.values()) == {"settled"}
    charged = before - gateway.account(account_id).balance_micros
    assert charged > 0 and charged == sum(
        entry.amount_micros * -1 for entry in gateway.ledger(account_id) if entry.amount_micros < 0
    )
