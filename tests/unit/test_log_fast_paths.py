"""The log path's shortcuts give exactly what the long way gives: timestamps and redaction."""

from __future__ import annotations

import datetime
import random

import pytest

from gateway_core.observability import redaction
from gateway_core.observability.log_format import _utc_time
from gateway_core.observability.redaction import MASK, Redactor, _keep_prefix, _mask_named_values, _SHAPES


def test_utc_time_is_isoformat_to_the_millisecond_including_rounding_edges() -> None:
    rng = random.Random(6)
    stamps = [rng.uniform(0, 4e9) for _ in range(20000)]
    stamps += [int(s) + f for s in stamps[:2000] for f in (0.0, 0.0005, 0.9995, 0.9999995, 0.9999996, 0.999999)]
    for stamp in stamps:
        expected = datetime.datetime.fromtimestamp(stamp, datetime.UTC).isoformat(timespec="milliseconds")
        assert _utc_time(stamp) == expected, stamp


def _redact_the_long_way(redactor: Redactor, text: str, names: bool = True) -> str:
    """Redactor.redact before its shortcuts: every pass always runs."""
    if redactor._literal_pattern is not None:
        text = redactor._literal_pattern.sub(MASK, text)
    for _, shape in _SHAPES:
        text = shape.sub(_keep_prefix, text)
    return _mask_named_values(text) if names else text


TEXTS = [
    "upstream_attempt request_id=req_1 model=m provider=p route=r attempt=1 outcome=ok latency_ms=3 upstream_status=None",
    "chat request",
    'headers {"Authorization": "Bearer sk-tg-abc", "X-Api-Key": "k"}',
    "API_KEY=opaque-configured-literal-value and more",
    "the literal opaque-configured-literal-value appears bare",
    "PASSWORD: hunter22 Messages=[{'role': 'user', 'content': 'hi'}]",
    "Content: said something; tokens: 12; prompt_tokens=3",
    "nothing to see here, just words and text without pairs",
    "text=hello world",
    "url https://x/y?key=AIzaSyA-1234567890abcdefghijkl&alt=sse",
    "İnput: ünïcode text: value",
    "Baſic dXNlcjpwYXNz and basıc dXNlcjpwYXNz, ?Key=abc",
    '{"message":"x","arguments":"{\\"a\\": 1}","tool_calls":[1,2]}',
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("names", [True, False])
def test_redact_with_shortcuts_equals_the_long_way(text: str, names: bool) -> None:
    redactor = Redactor()
    redactor.protect(["opaque-configured-literal-value", "another-secret-value"])
    assert redactor.redact(text, names=names) == _redact_the_long_way(redactor, text, names)


def test_mask_names_gives_plain_strings_back_and_redacts_pairs_inside_strings() -> None:
    redactor = Redactor()
    assert redactor.mask_names("route", "upstream/bench-model") == "upstream/bench-model"
    assert redactor.mask_names("detail", "password=abc123") == f"password={MASK}"
    assert redactor.mask_names("Authorization", "Bearer x") == MASK


def test_the_installed_redactor_still_redacts_each_record() -> None:
    assert redaction.install().redact("Bearer sk-tg-secretsecret") == f"Bearer {MASK}"
