"""Case-insensitive shapes match non-ASCII look-alikes of their ASCII keywords; so must redaction.

Python's `(?i)` matching treats U+017F (ſ) as `s`, U+0131 (ı) and U+0130 (İ) as `i` and
U+212A (K) as `k`, while `str.lower()` maps only some of them onto ASCII: a cheap test on the
lower-cased text that looks for the ASCII keyword would let such a credential through.
"""

from __future__ import annotations

import re

import pytest

from gateway_core.observability.redaction import _SHAPES, MASK, Redactor

LOOKALIKES = {"s": "\u017f", "i": "\u0131", "I": "\u0130", "k": "\u212a"}


def _spellings(keyword: str) -> list[str]:
    """keyword with each letter that has a look-alike replaced by it, one letter at a time."""
    out = []
    for at, char in enumerate(keyword):
        for ascii_char, lookalike in LOOKALIKES.items():
            if char.lower() == ascii_char.lower():
                out.append(keyword[:at] + lookalike + keyword[at + 1:])
    return out


@pytest.mark.parametrize("spelt", [s for word in ("Basic", "Bearer", "Digest") for s in _spellings(word)])
@pytest.mark.parametrize("names", [True, False])
def test_a_credential_after_a_lookalike_keyword_is_masked(spelt: str, names: bool) -> None:
    text = f"upstream said {spelt} opaque-credential-123 was refused"
    assert re.search(r"(?i)\b(?:bearer|basic|digest)\s", text), "the shape itself matches this spelling"
    redacted = Redactor().redact(text, names=names)
    assert "opaque-credential-123" not in redacted
    assert f"{spelt} {MASK}" in redacted


@pytest.mark.parametrize("spelt", [s for word in ("key", "token", "api_key") for s in _spellings(word)])
def test_a_url_parameter_with_a_lookalike_name_is_masked(spelt: str) -> None:
    text = f"GET https://example.test/v1?{spelt}=opaque-credential-123&alt=sse"
    redacted = Redactor().redact(text, names=False)
    assert "opaque-credential-123" not in redacted


@pytest.mark.parametrize("text", [
    "Ba\u017fic dXNlcjpwYXNz", "bas\u0131c dXNlcjpwYXNz", "Bas\u0130c dXNlcjpwYXNz", "?\u212aey=abc&x=1",
    "t\u00f6ken= plain words \u00e9t\u00e9 basic ok", "nothing here but \u00fcml\u00e4uts",
])
def test_non_ascii_text_is_redacted_as_every_shape_applied_would(text: str) -> None:
    expected = text
    for _, shape in _SHAPES:
        expected = shape.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, expected)
    assert Redactor().redact(text, names=False) == expected
