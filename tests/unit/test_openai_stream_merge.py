"""StreamTranslator's merge rules: the text-only deltas of one read, of one choice and one head, make one chunk.

feed_into() + end_read() translate one network read; feed() stays one for one.
A merged chunk is exactly what the one-for-one path makes of the run's last
delta, with the run's contents joined; anything but a text-only delta past its
choice's first is never merged, and breaks the run around it.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway_core.errors import Reason
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import ProviderError
from gateway_core.providers.openai import translate
from tests.providers_support import as_dicts, call_for, user_request

Chunk = chat_pb2.StreamChatCompletionResponse
HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-x"}


def chunk(*choices: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**HEAD, **fields, "choices": list(choices)}


def text(content: str, index: int = 0, **fields: Any) -> dict[str, Any]:
    return chunk({"index": index, "delta": {"content": content}, "finish_reason": None}, **fields)


def first(index: int = 0) -> dict[str, Any]:
    return chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})


def new_translator(*started: int) -> translate.StreamTranslator:
    """A translator past the first delta of each choice in started (0 if none given)."""
    translator = translate.StreamTranslator(call_for(user_request(stream=True)), provider="up")
    for index in started or (0,):
        translator.feed(first(index))
    return translator


def read(translator: translate.StreamTranslator, *events: Any) -> list[Chunk]:
    """The chunks of one read made of events."""
    out: list[Chunk] = []
    try:
        for event in events:
            translator.feed_into(event, out)
    finally:
        translator.end_read(out)
    return out


def contents(chunks: list[Chunk]) -> list[tuple[int, str]]:
    return [(choice.index, choice.delta.content) for chunk in chunks for choice in chunk.choices]


def test_text_deltas_of_one_read_make_one_chunk_exactly_as_the_last_would_be_with_the_joined_text() -> None:
    merged = read(new_translator(), text("Hel"), text("lo"), text(", "), text("world"))
    one_for_one = new_translator().feed(text("Hello, world"))
    assert as_dicts(merged) == as_dicts(one_for_one)
    assert contents(merged) == [(0, "Hello, world")]


def test_a_run_never_continues_into_the_next_read() -> None:
    translator = new_translator()
    assert contents(read(translator, text("a"), text("b"))) == [(0, "ab")]
    assert contents(read(translator, text("c"))) == [(0, "c")]
    assert read(translator) == [], "an empty read hands out nothing"


def test_feed_stays_one_for_one() -> None:
    translator = new_translator()
    assert [contents(translator.feed(text(t))) for t in "abc"] == [[(0, "a")], [(0, "b")], [(0, "c")]]


def test_the_first_delta_of_a_choice_is_never_merged() -> None:
    translator = translate.StreamTranslator(call_for(user_request(stream=True)))
    chunks = read(translator, first(), text("a"), text("b"))
    assert [c.choices[0].delta.role for c in chunks] == [types_pb2.ROLE_ASSISTANT, types_pb2.ROLE_UNSPECIFIED]
    assert contents(chunks) == [(0, ""), (0, "ab")]


@pytest.mark.parametrize("other", [
    chunk({"index": 0, "delta": {"content": "f"}, "finish_reason": "stop"}),
    chunk({"index": 0, "delta": {"content": "l"}, "logprobs": {"content": []}, "finish_reason": None}),
    chunk({"index": 0, "delta": {"refusal": "r"}, "finish_reason": None}),
    chunk({"index": 0, "delta": {"content": "x", "reasoning_content": "why"}, "finish_reason": None}),
    chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                 "function": {"name": "f", "arguments": "{}"}}]}}),
    chunk({"index": 0, "delta": {"content": "u"}}, usage={"prompt_tokens": 1, "completion_tokens": 1}),
    chunk({"index": 0, "delta": {"role": "assistant", "content": "again"}}),
], ids=["finish", "logprobs", "refusal", "extra-field", "tool-call", "usage", "role"])
def test_a_delta_carrying_anything_else_is_never_merged_and_splits_the_run(other: dict[str, Any]) -> None:
    merged = read(new_translator(), text("a"), text("b"), other, text("c"), text("d"))
    alone = new_translator().feed(other)
    assert len(merged) == 3
    assert contents(merged[:1]) == [(0, "ab")] and contents(merged[2:]) == [(0, "cd")]
    assert as_dicts(merged[1:2]) == as_dicts(alone), "the other chunk is what it is alone"


def test_choices_are_merged_only_where_one_follows_itself() -> None:
    chunks = read(new_translator(0, 1), text("a", 0), text("b", 1), text("c", 1), text("d", 0), text("e", 0))
    assert contents(chunks) == [(0, "a"), (1, "bc"), (0, "de")]


def test_a_new_fingerprint_or_service_tier_starts_a_new_chunk_under_its_own_head() -> None:
    chunks = read(new_translator(), text("a"), text("b", system_fingerprint="fp_a"),
                  text("c", system_fingerprint="fp_a"), text("d", system_fingerprint="fp_a", service_tier="flex"),
                  text("e", service_tier="flex"), text("f"))
    assert [(c.choices[0].delta.content, c.system_fingerprint, c.service_tier) for c in chunks] == [
        ("a", "", ""), ("bc", "fp_a", ""), ("d", "fp_a", "flex"), ("e", "", "flex"), ("f", "", "")]


def test_an_error_mid_read_comes_after_the_text_before_it() -> None:
    out: list[Chunk] = []
    translator = new_translator()
    translator.feed_into(text("a"), out)
    translator.feed_into(text("b"), out)
    with pytest.raises(ProviderError) as caught:
        translator.feed_into({"error": {"message": "overloaded", "type": "server_error"}}, out)
    assert caught.value.reason == Reason.UPSTREAM_UNAVAILABLE
    translator.end_read(out)
    assert contents(out) == [(0, "ab")], "the run before the error is handed out by end_read"


def test_a_malformed_chunk_mid_read_comes_after_the_text_before_it() -> None:
    out: list[Chunk] = []
    translator = new_translator()
    translator.feed_into(text("a"), out)
    translator.feed_into(text("b"), out)
    with pytest.raises(ProviderError) as caught:
        translator.feed_into(chunk({"index": 0, "delta": {}, "finish_reason": "bogus"}), out)
    assert caught.value.reason == Reason.UPSTREAM_ERROR
    translator.end_read(out)
    assert contents(out) == [(0, "ab")]
    translator.end_read(out)
    assert contents(out) == [(0, "ab")], "a run is handed out once"


def test_usage_and_finish_come_after_the_run_in_order() -> None:
    translator = new_translator()
    chunks = read(translator, text("a"), text("b"), chunk({"index": 0, "delta": {}, "finish_reason": "stop"}),
                  chunk(usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}))
    assert contents(chunks) == [(0, "ab"), (0, "")]
    assert chunks[1].choices[0].finish_reason and chunks[2].usage.total_tokens == 5 and not chunks[2].choices


def test_a_read_of_many_tiny_deltas_joins_them_once() -> None:
    tokens = [str(i % 10) for i in range(20_000)]
    chunks = read(new_translator(), *map(text, tokens))
    assert contents(chunks) == [(0, "".join(tokens))]


def test_random_reads_give_every_choice_the_same_text_and_every_other_chunk_the_same_bytes() -> None:
    """Reads of any mix of deltas: merged or one for one, each choice's text is the same, and the chunks
    that are not text-only are the same messages in the same order."""
    shapes = [
        lambda rng: text(rng.choice(["a", "bc", "", "é"]), rng.choice([0, 1])),
        lambda rng: text("m", rng.choice([0, 1]), system_fingerprint=rng.choice(["fp_1", "fp_2"])),
        lambda rng: chunk({"index": rng.choice([0, 1]), "delta": {"content": "p"}, "logprobs": {"content": []}}),
        lambda rng: chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "x"}}]}}),
    ]
    rng = random.Random(6)
    for _ in range(50):
        events = [rng.choice(shapes)(rng) for _ in range(rng.randrange(1, 30))]
        # Where reads end: a random few, and always after the last event.
        cuts = sorted({*rng.sample(range(1, len(events)), rng.randrange(0, len(events))), len(events)})
        merged_translator, plain = new_translator(0, 1), new_translator(0, 1)
        merged: list[Chunk] = []
        start = 0
        for cut in cuts:
            merged += read(merged_translator, *events[start:cut])
            start = cut
        one_for_one = [c for event in events for c in plain.feed(event)]
        for index in (0, 1):
            assert ("".join(t for i, t in contents(merged) if i == index)
                    == "".join(t for i, t in contents(one_for_one) if i == index))
        assert len(merged) <= len(one_for_one)

        def others(chunks: list[Chunk]) -> list[bytes]:
            return [c.SerializeToString() for c in chunks
                    if c.choices[0].logprobs_json or c.choices[0].delta.tool_calls]

        assert others(merged) == others(one_for_one)
