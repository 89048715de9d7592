"""Redaction's name check asks fewer questions and masks exactly what it masked before.

redact() asks whether any masked name occurs in a text with `:` or `=` before
it looks for `name: value` pairs; it now asks about the 19 masked names that
hold no other masked name (_NAME_NEEDLES) instead of all 25. These tests prove
the answer is the same for every text, and that every masked name is still
masked in the upstream_attempt line (a message made of `name=value` pairs, and
its fields), written the fast way (json_lines) and the normal way.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.chat import attempts
from gateway_core.observability import redaction
from gateway_core.observability.log_batch import BatchingHandler
from gateway_core.observability.log_format import JsonFormatter
from gateway_core.observability.redaction import _NAME_NEEDLES, MASK, Redactor, _mask_named_values, masked_names
from tests.unit.test_log_fast_paths import _redact_the_long_way

SECRET = "s3cr3t-v4lue-xyz"  # no key shape: only its name can mask it
SHAPED = ("sk-tg-0123456789abcdef", "AIzaSyA-1234567890abcdefghijkl", "Bearer b34rer-t0ken", "?key=k3y-in-url")
ALL_NAMES = sorted(masked_names())


def test_there_are_25_masked_names_and_each_holds_a_needle() -> None:
    assert len(ALL_NAMES) == 25
    assert set(_NAME_NEEDLES) <= masked_names()
    for name in ALL_NAMES:
        assert any(needle in name for needle in _NAME_NEEDLES), name


@given(st.lists(st.sampled_from([*ALL_NAMES, *(n[:-1] for n in ALL_NAMES), *(n.upper() for n in ALL_NAMES), "x",
                                 " ", "=", ":", '"', "-", "_"]), max_size=12).map("".join) | st.text(max_size=60))
@settings(max_examples=400, deadline=None)
def test_some_needle_occurs_exactly_when_some_masked_name_does(text: str) -> None:
    lowered = text.lower()
    assert any(n in lowered for n in _NAME_NEEDLES) == any(n in lowered for n in ALL_NAMES)


@given(st.lists(st.sampled_from([*ALL_NAMES, *(n.upper() for n in ALL_NAMES), "model", "route", "=", ":", " ",
                                 '"', "'", "[1, 2]", "{", "}", "value", SECRET, "Bearer", "sk-tg-abc"]),
                max_size=12).map("".join))
@settings(max_examples=400, deadline=None)
def test_redact_equals_the_long_way_on_texts_made_of_names_and_separators(text: str) -> None:
    redactor = Redactor()
    redactor.protect(["opaque-configured-literal-value"])
    assert redactor.redact(text) == _redact_the_long_way(redactor, text)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_masked_name_is_masked_in_a_message_with_pairs(name: str) -> None:
    redactor = Redactor()
    for spelt in (name, name.upper(), name.capitalize()):
        for pair in (f"{spelt}={SECRET}", f"{spelt}: {SECRET}", f'"{spelt}": "{SECRET}"', f"{spelt} = {SECRET}"):
            text = f"upstream_attempt request_id=req_1 model=m {pair} attempt=1"
            assert redactor.redact(text) == _mask_named_values(text)
            assert SECRET not in redactor.redact(text), pair


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The root logger as `tollgate serve` has it (one batching JSON handler), writing to a buffer."""
    redactor = redaction.install()
    out = io.StringIO()
    handler = BatchingHandler(lambda: out)
    handler.setFormatter(JsonFormatter(redactor))
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.handlers = saved
        root.setLevel(level)


def _attempt_fields(**values: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "request_id": "req_019ac0ffee0123456789abcdef01", "model": "bench-model", "provider": "upstream",
        "route": "bench-model", "attempt": 1, "outcome": "ok", "latency_ms": 3, "upstream_status": None,
        "streamed": False,
    }
    fields.update(values)
    return fields


def _attempt_line(out: io.StringIO, fields: dict[str, object], *, fast: bool) -> str:
    """The upstream_attempt line as attempts._write_attempt writes it (fast: the json_lines shortcut)."""
    out.seek(0)
    out.truncate()
    if fast:
        attempts._write_attempt(fields)
    else:  # the normal LogRecord path, as when another handler listens
        attempts.log.info(attempts._ATTEMPT_MESSAGE, fields, extra={"upstream_attempt": fields})
    logging.getLogger().handlers[0].flush()
    return out.getvalue()


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("field", ["request_id", "model", "provider", "route"])
def test_every_masked_name_inside_an_attempt_field_is_masked_in_the_line(
    json_log: io.StringIO, name: str, field: str
) -> None:
    for value in (f"x {name}={SECRET}", f"{name.upper()}: {SECRET}", f'{{"{name}": "{SECRET}"}}'):
        for fast in (True, False):
            line = _attempt_line(json_log, _attempt_fields(**{field: value}), fast=fast)
            assert "upstream_attempt request_id=" in line
            assert SECRET not in line, (value, fast, line)
            assert MASK in line


@pytest.mark.parametrize("shaped", SHAPED)
@pytest.mark.parametrize("field", ["request_id", "model", "provider", "route", "outcome"])
def test_key_shapes_inside_an_attempt_field_are_masked_in_the_line(json_log: io.StringIO, shaped: str,
                                                                    field: str) -> None:
    secret = shaped.split()[-1].split("=")[-1]
    for fast in (True, False):
        line = _attempt_line(json_log, _attempt_fields(**{field: f"pre {shaped} post"}), fast=fast)
        assert secret not in line, (fast, line)
        assert MASK in line


def test_an_ordinary_attempt_line_is_written_whole_and_unmasked(json_log: io.StringIO) -> None:
    fast = _attempt_line(json_log, _attempt_fields(), fast=True)
    slow = _attempt_line(json_log, _attempt_fields(), fast=False)
    assert MASK not in fast
    assert fast.split('"level"', 1)[1] == slow.split('"level"', 1)[1]  # the same line but for its time
