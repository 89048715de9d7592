"""A message redacted when its record was created is not redacted again, unless it changed since."""

from __future__ import annotations

import logging

import orjson

from gateway_core.observability import redaction
from gateway_core.observability.log_format import JsonFormatter
from gateway_core.observability.redaction import MASK, Redactor


def _created_record(message: str) -> logging.LogRecord:
    """A record as the installed factory hands it out: its message redacted, and marked so."""
    record = logging.LogRecord("tollgate.test", logging.INFO, __file__, 1, message, None, None)
    redaction.redact_record(record, Redactor())
    return record


def test_a_message_redacted_at_creation_stays_masked_in_the_json_line() -> None:
    record = _created_record('body {"messages": [{"content": "my secret plan"}]} password=hunter22')
    assert getattr(record, redaction.REDACTED_MARK) is record.msg
    line = JsonFormatter(Redactor()).format(record)
    fields = orjson.loads(line)
    assert "my secret plan" not in line and "hunter22" not in line
    assert fields["message"] == f'body {{"messages": "{MASK}"}} password={MASK}'
    assert redaction.REDACTED_MARK not in fields  # the mark is no log field


def test_a_message_changed_after_creation_is_redacted_by_the_formatter() -> None:
    record = _created_record("harmless")
    record.msg = "later: secret=opaque-value token: another-one"  # e.g. a filter rewrote it
    line = JsonFormatter(Redactor()).format(record)
    assert "opaque-value" not in line and "another-one" not in line


def test_plain_values_pass_and_text_values_are_still_checked() -> None:
    redactor = Redactor()
    assert [redactor.mask_names("n", v) for v in (0, 1.5, True, None)] == [0, 1.5, True, None]
    assert redactor.mask_names("password", 123) == MASK
    assert redactor.mask_names("note", "authorization: opaque-value") == f"authorization: {MASK}"
