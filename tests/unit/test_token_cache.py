"""Counts of long texts are remembered by digest: the same answers, counted once, no text kept."""

from __future__ import annotations

import pytest

from gateway_core import tokens


def _text(n: int, seed: str) -> str:
    return (f"{seed} The quick brown fox, 12345 jumps; over\n\tthe lazy dog ünïcödé! " * (n // 60 + 1))[:n]


@pytest.mark.parametrize("length", [tokens.CACHE_MIN_CHARS - 1, tokens.CACHE_MIN_CHARS, 20_000, tokens.SAMPLE_THRESHOLD])
def test_a_remembered_count_is_the_count(length: int) -> None:
    text = _text(length, f"a{length}")
    first, second = tokens.estimate_text_tokens(text), tokens.estimate_text_tokens(text)
    assert first == second == tokens._count(text)


def test_a_long_text_is_counted_once_and_the_cache_holds_digests_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = tokens._count
    monkeypatch.setattr(tokens, "_count", lambda text: calls.append(len(text)) or real(text))
    text = _text(10_000, "counted-once")
    for _ in range(5):
        tokens.estimate_text_tokens(str(text))  # a fresh equal string each time, as from each request
    assert calls == [10_000]
    assert all(isinstance(key, bytes) and len(key) == 16 for key in tokens._COUNTS)


def test_different_texts_do_not_share_an_entry() -> None:
    base = _text(5_000, "same-prefix")
    changed = base[:-1] + ("x" if base[-1] != "x" else "y")
    assert tokens.estimate_text_tokens(base) == tokens._count(base)
    assert tokens.estimate_text_tokens(changed) == tokens._count(changed)


def test_the_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "CACHE_ENTRIES", 8)
    monkeypatch.setattr(tokens, "_COUNTS", {})
    for i in range(50):
        tokens.estimate_text_tokens(_text(3_000, f"bounded-{i}"))
    assert len(tokens._COUNTS) == 8
