"""One request at a time through the facade (official openai SDK): its hold and settlement run inline.

The gateway's own counters (Database.writes_run_inline / writes_run_on_thread)
say where each write ran; the account and the rows say what was charged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest

from tests.gateway_support import TRANSPORTS, RunningGateway, running_gateway, settings_for
from tests.ledger_support import check_invariants

HELLO = [{"role": "user", "content": "Hello, inline world!"}]
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


@pytest.mark.parametrize("stream", [False, True])
def test_requests_one_at_a_time_hold_and_settle_inline(gateway: RunningGateway, stream: bool) -> None:
    account_id, _, secret = gateway.create_key(balance_micros=5_000_000)
    client = openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=secret, max_retries=0)
    db = gateway.core.store.db
    before = gateway.account(account_id).balance_micros
    client.chat.completions.create(model="mock-chat", messages=HELLO)  # the first hold opens the writer's connection
    _wait_for_inline_writes(gateway, 1)
    inline, thread = db.writes_run_inline, db.writes_run_on_thread
    for index in range(REQUESTS):
        if stream:
            chunks = list(client.chat.completions.create(model="mock-chat", messages=HELLO, stream=True))
            assert chunks and chunks[-1].choices[0].finish_reason == "stop"
        else:
            reply = client.chat.completions.create(model="mock-chat", messages=HELLO)
            assert reply.choices[0].message.content
        _wait_for_inline_writes(gateway, inline + 2 * (index + 1))
    assert (db.writes_run_inline - inline, db.writes_run_on_thread - thread) == (2 * REQUESTS, 0)
    snapshot = check_invariants(db.engine)  # one usage record per settled hold, sums exact
    assert set(snapshot.holds.values()) == {"settled"}
    charged = before - gateway.account(account_id).balance_micros
    assert charged > 0 and charged == sum(
        entry.amount_micros * -1 for entry in gateway.ledger(account_id) if entry.amount_micros < 0
    )
