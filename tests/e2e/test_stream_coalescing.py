"""Text deltas that reach the gateway in one upstream read leave it as one chunk; nothing else is merged.

Each stream below is played twice by a fake OpenAI upstream
(tests/fakes/openai_event_upstream.py): every event in one write (one read
for the gateway) and each event on its own. The official openai SDK reads
both through the real facade and core (auth, hold, settle on SQLite): the
same text, finish reasons, usage and bill either way; the burst in fewer
chunks, the spaced stream chunk for chunk; logprobs, tool calls, other
choices, a new fingerprint and an error are never merged across.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest

from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc, metering_pb2, metering_pb2_grpc
from tests.fakes.openai_event_upstream import (
    EventStreamUpstream,
    error,
    finish,
    first,
    text,
    text_with_logprobs,
    tool_call,
    usage,
)
from tests.gateway_support import RunningGateway, running_gateway, settings_for

TOKENS = [f"tok{i} " for i in range(16)]
STREAMS: dict[str, list[Any]] = {
    "text": [first(), *map(text, TOKENS), finish(), usage(12, 16)],
    "no-usage": [first(), *map(text, TOKENS), finish()],  # the gateway estimates
    "logprobs": [first(), *(text_with_logprobs(t, -0.5 - i) for i, t in enumerate(TOKENS[:4])), finish(), usage(9, 4)],
    "tools": [first(), text("Let me "), text("check."),
              tool_call(0, call_id="call_a", name="get_weather", arguments=""),
              tool_call(0, arguments='{"city"'), tool_call(0, arguments=':"Paris"}'),
              tool_call(1, call_id="call_b", name="get_time", arguments='{"tz":"CET"}'),
              finish("tool_calls"), usage(20, 7)],
    "two-choices": [first(0), first(1), text("a", 0), text("b", 1), text("c", 0), text("d", 1),
                    text("e", 0), text("f", 0), text("g", 1), text("h", 1), finish("stop", 0), finish("length", 1),
                    usage(10, 8)],
    "marks": [first(system_fingerprint="fp_a"), text("a", system_fingerprint="fp_a"),
              text("b", system_fingerprint="fp_a"), text("c", system_fingerprint="fp_b"),
              text("d", system_fingerprint="fp_b"), text("e", system_fingerprint="fp_b", service_tier="flex"),
              text("f", system_fingerprint="fp_b", service_tier="flex"), finish(), usage(7, 6)],
    "error": [first(), text("partial "), text("answer"), error()],
}
MODELS = [f"{name}@{how}" for name in STREAMS for how in ("together", "spaced")]


@pytest.fixture(scope="module")
def upstream() -> Iterator[EventStreamUpstream]:
    with EventStreamUpstream(STREAMS) as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: EventStreamUpstream) -> Iterator[RunningGateway]:
    settings = settings_for(
        tmp_path_factory.mktemp("coalescing"),
        providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url, "api_key": "sk-up"}],
        models=[{"name": model, "routes": [{"provider": "up", "model": model}], "input_price": 1, "output_price": 2}
                for model in MODELS],
    )
    with running_gateway(settings, in_process=True) as running:  # as `tollgate serve` runs
        yield running


@pytest.fixture(scope="module")
def key(gateway: RunningGateway) -> str:
    return gateway.create_key()[2]


@pytest.fixture(scope="module")
def client(gateway: RunningGateway, key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=key, max_retries=0) as sdk:
        yield sdk


@dataclass
class Streamed:
    """What one streamed completion gave the client."""

    request_id: str
    chunks: list[Any] = field(default_factory=list)
    failure: openai.APIError | None = None

    def deltas(self, index: int = 0) -> list[str | None]:
        """The content of every delta of choice `index`, chunk by chunk (None: a delta without content)."""
        return [c.delta.content for chunk in self.chunks for c in chunk.choices if c.index == index]

    def texts(self, index: int = 0) -> list[str]:
        """The non-empty contents of choice `index`, chunk by chunk."""
        return [content for content in self.deltas(index) if content]

    def finish_reasons(self) -> dict[int, str]:
        return {c.index: c.finish_reason for chunk in self.chunks for c in chunk.choices if c.finish_reason}

    def usage(self) -> Any:
        reported = [chunk.usage for chunk in self.chunks if chunk.usage is not None]
        assert len(reported) == 1, "one usage chunk, last"
        assert self.chunks[-1].usage is not None
        return reported[0]


def stream(client: openai.OpenAI, upstream: EventStreamUpstream, model: str, **options: Any) -> Streamed:
    upstream.delivered = 0
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Tell me something."}], stream=True,
        stream_options={"include_usage": True}, **options)
    streamed = Streamed(response.response.headers["x-request-id"])
    try:
        for chunk in response:
            streamed.chunks.append(chunk)
            upstream.delivered += 1  # a spaced upstream writes its next event only now
    except openai.APIError as failure:
        streamed.failure = failure
    return streamed


def both(client: openai.OpenAI, upstream: EventStreamUpstream, name: str, **options: Any) -> tuple[Streamed, Streamed]:
    """The stream `name` played in one write and played event by event."""
    return (stream(client, upstream, f"{name}@together", **options),
            stream(client, upstream, f"{name}@spaced", **options))


def usage_record(gateway: RunningGateway, key: str, request_id: str) -> metering_pb2.UsageRecord:
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        page = metering_pb2_grpc.MeteringServiceStub(channel).ListUsageRecords(
            metering_pb2.ListUsageRecordsRequest(page_size=1000), metadata=(("authorization", f"Bearer {key}"),))
    records = [record for record in page.usage_records if record.request_id == request_id]
    assert len(records) == 1, "every admitted request leaves exactly one usage record"
    return records[0]


def billed(gateway: RunningGateway, key: str, streamed: Streamed) -> tuple[Any, ...]:
    """What a request was billed: its usage record's counts, cost, status and whether estimated."""
    record = usage_record(gateway, key, streamed.request_id)
    return (record.prompt_tokens, record.completion_tokens, record.cost_micros, record.status, record.estimated)


def test_a_burst_of_text_reaches_the_client_as_one_chunk_with_the_same_text_finish_usage_and_bill(
    client: openai.OpenAI, upstream: EventStreamUpstream, gateway: RunningGateway, key: str,
) -> None:
    together, spaced = both(client, upstream, "text")
    assert together.deltas() == ["", "".join(TOKENS), None], "role chunk, the merged text, the finish chunk"
    assert spaced.deltas() == ["", *TOKENS, None], "one chunk per upstream read, as before"
    assert together.finish_reasons() == spaced.finish_reasons() == {0: "stop"}
    assert together.usage().model_dump() == spaced.usage().model_dump()
    assert (together.usage().prompt_tokens, together.usage().completion_tokens) == (12, 16)
    assert billed(gateway, key, together) == billed(gateway, key, spaced)
    assert billed(gateway, key, together)[4] is False, "the upstream's own counts"
    assert {chunk.id for chunk in together.chunks} == {chunk.id for chunk in spaced.chunks} == {"chatcmpl-events"}
    assert {chunk.model for chunk in together.chunks} == {"text@together"}


def test_without_upstream_usage_the_estimate_is_the_same_merged_or_not(
    client: openai.OpenAI, upstream: EventStreamUpstream, gateway: RunningGateway, key: str,
) -> None:
    together, spaced = both(client, upstream, "no-usage")
    assert together.texts() == ["".join(TOKENS)] and spaced.texts() == TOKENS
    assert together.usage().model_dump() == spaced.usage().model_dump()
    assert billed(gateway, key, together) == billed(gateway, key, spaced)
    prompt, completion, cost, _, estimated = billed(gateway, key, together)
    assert estimated is True and completion > 0 and cost == prompt * 1 + completion * 2


def test_chunks_with_logprobs_are_never_merged(
    client: openai.OpenAI, upstream: EventStreamUpstream, gateway: RunningGateway, key: str,
) -> None:
    together, spaced = both(client, upstream, "logprobs", logprobs=True)
    assert together.texts() == spaced.texts() == TOKENS[:4]
    for streamed in (together, spaced):
        logprobs = [c.logprobs.content[0] for chunk in streamed.chunks for c in chunk.choices if c.logprobs]
        assert [(entry.token, entry.logprob) for entry in logprobs] == [
            (token, -0.5 - i) for i, token in enumerate(TOKENS[:4])]
    assert billed(gateway, key, together) == billed(gateway, key, spaced)


def test_tool_call_deltas_are_never_merged_and_the_text_before_them_is(
    client: openai.OpenAI, upstream: EventStreamUpstream, gateway: RunningGateway, key: str,
) -> None:
    together, spaced = both(client, upstream, "tools")
    assert together.texts() == ["Let me check."] and spaced.texts() == ["Let me ", "check."]
    for streamed in (together, spaced):
        calls = [c.delta.tool_calls for chunk in streamed.chunks for c in chunk.choices if c.delta.tool_calls]
        assert len(calls) == 4, "one chunk per upstream tool-call delta"
        arguments: dict[int, str] = {}
        for (call,) in calls:
            arguments[call.index] = arguments.get(call.index, "") + (call.function.arguments or "")
        assert arguments == {0: '{"city":"Paris"}', 1: '{"tz":"CET"}'}
        assert streamed.finish_reasons() == {0: "tool_calls"}
    assert billed(gateway, key, together) == billed(gateway, key, spaced)


def test_interleaved_choices_are_merged_only_where_one_choice_follows_itself(
    client: openai.OpenAI, upstream: EventStreamUpstream, gateway: RunningGateway, key: str,
) -> None:
    together, spaced = both(client, upstream, "two-choices", n=2)
    assert together.texts(0) == ["a", "c", "ef"] and together.texts(1) == ["b", "d", "gh"]
    assert spaced.texts(0) == ["a", "c", "e", "f"] and spaced.texts(1) == ["b", "d", "g", "h"]
    order = [(c.index, c.delta.content) for chunk in together.chunks for c in chunk.choices if c.delta.content]
    assert order == [(0, "a"), (1, "b"), (0, "c"), (1, "d"), (0, "ef"), (1, "gh")], "in the upstream's order"
    assert together.finish_reasons() == spaced.finish_reasons() == {0: "stop", 1: "length"}
    assert billed(gateway, key, together) == billed(gateway, key, spaced)


def test_a_new_fingerprint_or_service_tier_mid_read_starts_a_new_chunk(
    client: openai.OpenAI, upstream: EventStreamUpstream, gateway: RunningGateway, key: str,
) -> None:
    together, spaced = both(client, upstream, "marks")
    assert together.texts() == ["ab", "cd", "ef"]
    assert spaced.texts() == ["a", "b", "c", "d", "e", "f"]
    assert billed(gateway, key, together) == billed(gateway, key, spaced)
    # The facade repeats its first chunk's head (fingerprint included) on every chunk; the core's chunks
    # carry each upstream chunk's own, so that is where the heads of the merged chunks show.
    messages = grpc_stream(gateway, key, "marks@together")
    marked = [(choice.delta.content, message.system_fingerprint, message.service_tier)
              for message in messages for choice in message.choices if choice.delta.content]
    assert marked == [("ab", "fp_a", ""), ("cd", "fp_b", ""), ("ef", "fp_b", "flex")]


def test_an_error_after_text_in_the_same_read_comes_after_that_text(
    client: openai.OpenAI, upstream: EventStreamUpstream, gateway: RunningGateway, key: str,
) -> None:
    together, spaced = both(client, upstream, "error")
    assert together.texts() == ["partial answer"] and spaced.texts() == ["partial ", "answer"]
    for streamed in (together, spaced):
        assert streamed.failure is not None, "the upstream's error reaches the client in-band, after the text"
        assert "overloaded" not in str(streamed.failure), "no upstream text in errors"
    assert billed(gateway, key, together) == billed(gateway, key, spaced)
    prompt, completion, cost, _, estimated = billed(gateway, key, together)
    assert completion > 0 and cost > 0 and estimated, "charged for what was generated, by estimate"


def test_the_grpc_stream_sees_the_merged_chunks_too(
    upstream: EventStreamUpstream, gateway: RunningGateway, key: str,
) -> None:
    messages = grpc_stream(gateway, key, "text@together")
    contents = [choice.delta.content for message in messages for choice in message.choices]
    assert contents == ["", "".join(TOKENS), ""]
    assert messages[-1].HasField("usage") and messages[-1].usage.completion_tokens == 16
    spaced = grpc_stream(gateway, key, "text@spaced", upstream)
    assert [choice.delta.content for message in spaced for choice in message.choices] == ["", *TOKENS, ""]


def grpc_stream(gateway: RunningGateway, key: str, model: str,
                upstream: EventStreamUpstream | None = None) -> list[chat_pb2.StreamChatCompletionResponse]:
    """Every message of a StreamChatCompletion call over the core's gRPC port (counted for a spaced upstream)."""
    request = chat_pb2.StreamChatCompletionRequest(model=model)
    request.messages.add(role=1, content="Tell me something.")
    messages = []
    if upstream is not None:
        upstream.delivered = 0
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        for message in chat_pb2_grpc.ChatServiceStub(channel).StreamChatCompletion(
                request, metadata=(("authorization", f"Bearer {key}"),), timeout=30):
            messages.append(message)
            if upstream is not None:
                upstream.delivered += 1
    return messages
