"""The offline token estimator: plausible, deterministic, and bounded on pathological input."""

from __future__ import annotations

import time

import hypothesis
import hypothesis.strategies
import pytest

from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core import tokens as tokens_module
from gateway_core.tokens import estimate_prompt_tokens, estimate_text_tokens
from tests.providers_support import user_request


@pytest.mark.parametrize(("text", "low", "high"), [
    ("", 0, 0),
    ("Hello", 1, 1),
    ("Hello there, gateway!", 4, 7),  # cl100k: 5
    ("The quick brown fox jumps over the lazy dog.", 9, 12),  # cl100k: 10
    ('{"city":"Paris","days":3}', 7, 14),
    ("1234567890", 3, 5),
    ("你好世界", 3, 8),
    ("internationalization", 3, 6),
])
def test_estimates_are_in_a_plausible_range(text: str, low: int, high: int) -> None:
    assert low <= estimate_text_tokens(text) <= high


def test_longer_text_costs_more_and_is_deterministic() -> None:
    short, long = "word " * 10, "word " * 1000
    assert estimate_text_tokens(long) > estimate_text_tokens(short)
    assert estimate_text_tokens(long) == estimate_text_tokens("word " * 1000)


@pytest.mark.parametrize("text", [
    "a" * 5_000_000,
    "a " * 2_500_000,
    "你" * 5_000_000,
    "!?" * 2_500_000,
    "\n" * 5_000_000,
])
def test_huge_inputs_are_fast(text: str) -> None:
    started = time.perf_counter()
    tokens = estimate_text_tokens(text)
    assert time.perf_counter() - started < 0.5
    assert tokens > 0


def test_sampling_sees_past_a_cheap_prefix() -> None:
    cheap = "a " * 50_000
    assert estimate_text_tokens(cheap + "你" * 1_000_000) > 500_000


def test_sampled_estimates_stay_close_to_exact_counts() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 5000  # 225 KB, sampled
    exact = estimate_text_tokens("The quick brown fox jumps over the lazy dog. ") * 5000
    assert abs(estimate_text_tokens(text) - exact) / exact < 0.05


def test_prompt_estimate_counts_messages_tools_and_overhead() -> None:
    bare = estimate_prompt_tokens(user_request("hi"))
    assert bare == 3 + 4 + 1, "reply priming + per-message framing + the text"
    richer = user_request("hi")
    call = chat_pb2.FunctionCall(name="get_weather", arguments='{"city":"Paris"}')
    richer.messages.add(role=types_pb2.ROLE_ASSISTANT, tool_calls=[chat_pb2.ToolCall(id="call_1", function=call)])
    richer.messages.add(role=types_pb2.ROLE_TOOL, tool_call_id="call_1", content='{"temp_c": 21}')
    richer.messages.add(role=types_pb2.ROLE_USER, parts=[
        chat_pb2.ContentPart(text="and this?"),
        chat_pb2.ContentPart(image_url=chat_pb2.ImageUrl(url="https://example.com/a.png", detail="low")),
    ])
    richer.tools.add(type="function", function=chat_pb2.FunctionDefinition(
        name="get_weather", description="Weather for a city", parameters_json='{"type":"object"}'))
    estimate = estimate_prompt_tokens(richer)
    assert estimate > bare + 85 + 3 * 4 + 8


def test_high_detail_images_cost_more_than_low() -> None:
    def with_image(detail: str) -> int:
        request = user_request("look")
        request.messages[0].parts.add(image_url=chat_pb2.ImageUrl(url="https://example.com/a.png", detail=detail))
        return estimate_prompt_tokens(request)

    assert with_image("high") > with_image("low")


def _reference_count(text: str) -> int:
    """The original piece-by-piece loop over _PIECES, kept as the specification of _count."""
    tokens = 0
    for match in tokens_module._PIECES.finditer(text):
        piece = match.group()
        first, size = piece[0], len(piece)
        if first.isascii() and first.isalpha():
            tokens += 1 if size <= 6 else (size + 3) // 4
        elif first.isascii() and first.isdigit():
            tokens += (size + 2) // 3
        elif first.isspace():
            tokens += 0 if piece == " " else (size + 7) // 8
        elif not first.isascii():
            tokens += 1
        else:
            tokens += (size + 1) // 2
    return tokens


# Characters from every kind of piece and the edges between them: ASCII letters, digits,
# punctuation, ASCII whitespace (incl. \x1c-\x1f), control characters, DEL, non-ASCII
# whitespace (NBSP, ideographic space), accented and CJK letters, emoji.
_TRICKY = "aZ09!~. \t\n\r\x0b\x0c\x1c\x1f\x00\x07\x7f\u00a0\u3000\u2028é中😀"


@hypothesis.given(hypothesis.strategies.text(alphabet=_TRICKY) | hypothesis.strategies.text())
@hypothesis.settings(max_examples=400, deadline=None)
def test_fast_count_equals_the_piece_by_piece_count(text: str) -> None:
    assert tokens_module._count(text) == _reference_count(text)


def test_fast_count_on_a_realistic_prompt() -> None:
    text = ("Hello there, gateway! Summarise:\n\n  def f(x):\n\treturn x**2  # 12345678\n"
            "Ünïcödé — 中文 😀 words supercalifragilistic, 3.14159\u00a0\u00a0end.\n") * 50
    assert tokens_module._count(text) == _reference_count(text) > 0


@hypothesis.given(hypothesis.strategies.text(alphabet=_TRICKY, max_size=tokens_module.SHORT_ASCII_CHARS)
                  | hypothesis.strategies.text(alphabet=hypothesis.strategies.characters(max_codepoint=127),
                                               max_size=tokens_module.SHORT_ASCII_CHARS))
@hypothesis.settings(max_examples=400, deadline=None)
def test_short_ascii_texts_count_as_the_piece_by_piece_count(text: str) -> None:
    expected = _reference_count(text)
    assert tokens_module.estimate_text_tokens(text) == expected
    if text.isascii():
        assert tokens_module._count_short_ascii(text) == expected
