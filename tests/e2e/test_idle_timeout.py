"""idle_timeout_seconds end to end: a stream silent between chunks for longer is cut in-band;
a stream whose every gap is shorter runs to its end however long it takes in total."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.gateway_support import RunningGateway, running_gateway, settings_for

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with FakeOpenAIUpstream(slow_interval=0.3, slow_chunks=6) as upstream:
        settings = settings_for(
            Path(tmp_path_factory.mktemp("idle")),
            providers=[
                {"name": "impatient", "type": "openai", "base_url": upstream.base_url, "idle_timeout_seconds": 0.1},
                {"name": "patient", "type": "openai", "base_url": upstream.base_url, "idle_timeout_seconds": 1.0},
            ],
            models=[
                {"name": "impatient", "routes": [{"provider": "impatient", "model": "fake-slow"}],
                 "input_price": 1, "output_price": 1},
                {"name": "patient", "routes": [{"provider": "patient", "model": "fake-slow"}],
                 "input_price": 1, "output_price": 1},
            ],
        )
        with running_gateway(settings) as running:
            yield running


def _client(gateway: RunningGateway) -> openai.OpenAI:
    _, _, key = gateway.create_key()
    return openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=key, max_retries=0)


def test_a_gap_longer_than_idle_timeout_ends_the_stream_in_band(gateway: RunningGateway) -> None:
    started = time.monotonic()
    with _client(gateway) as client, pytest.raises(openai.APIError) as caught:
        for _ in client.chat.completions.create(model="impatient", messages=HELLO, stream=True):
            pass
    assert "timed out" in str(caught.value.message)
    assert time.monotonic() - started < 1.5, "cut at the first long gap, not at the stream's end"


def test_gaps_shorter_than_idle_timeout_never_add_up_to_a_timeout(gateway: RunningGateway) -> None:
    with _client(gateway) as client:
        chunks = list(client.chat.completions.create(model="patient", messages=HELLO, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f" tick{i}" for i in range(6)), "every chunk arrived over ~2 s, more than the 1 s limit"
