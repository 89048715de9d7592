"""The redactor masks credentials by shape, name and value, and prompts by field name; leaves the rest."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from gateway_core import keys
from gateway_core.observability import redaction
from gateway_core.observability.log_format import JsonFormatter, TextFormatter, configure_logging, effective_settings
from gateway_core.observability.redaction import MASK, Redactor
from gateway_core.observability.settings import LoggingSettings
from tests.log_leaks import find_leaks

TOLLGATE_KEY = keys.generate_key()[1]
OPENAI_KEY = "sk-proj-AbCdEf0123456789xyzXYZ_-abcdefghij"
ANTHROPIC_KEY = "sk-ant-api03-AAAAbbbbCCCCdddd-eeee_ffff"
GEMINI_KEY = "AIzaSyA0123456789abcdefghijklmnopqrstu"


@pytest.mark.parametrize(
    "text, secret",
    [
        (f"verifying key {TOLLGATE_KEY} for account acct_1", TOLLGATE_KEY),
        (f"upstream said: Incorrect API key provided: {OPENAI_KEY}.", OPENAI_KEY),
        (f"x-api-key={ANTHROPIC_KEY}", ANTHROPIC_KEY),
        (f"GET https://generativelanguage.googleapis.com/v1beta/models?key={GEMINI_KEY}&alt=sse", GEMINI_KEY),
        (f"{{'authorization': 'Bearer opaque-token-with-no-shape'}}", "opaque-token-with-no-shape"),
        ('headers {"x-goog-api-key": "plain-gemini-value"}', "plain-gemini-value"),
        ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
    ],
)
def test_credentials_are_masked_by_shape_or_header_name(text: str, secret: str) -> None:
    redacted = Redactor().redact(text)
    assert secret not in redacted and MASK in redacted


def test_configured_values_are_masked_wherever_they_appear() -> None:
    redactor = Redactor()
    redactor.protect(["operator-upstream-credential", "ab"])  # "ab" is too short to protect by value
    redacted = redactor.redact("connect failed for operator-upstream-credential@host; ab cd")
    assert redacted == f"connect failed for {MASK}@host; ab cd"


def test_prompt_bodies_are_masked_by_field_name_whole_brackets_included() -> None:
    body = orjson.dumps({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "my diary [private] {\"x\": 1}"}],
        "temperature": 0.2,
    }).decode()
    redacted = Redactor().redact(f"rejected body {body}")
    assert "diary" not in redacted and "private" not in redacted
    assert '"model":"gpt-4o-mini"' in redacted and '"temperature":0.2' in redacted


def test_ids_and_ordinary_words_are_left_alone() -> None:
    text = "request req_123 for account acct_9 key_id=uP4FP6lQjaxD api_key_id=abc model=gpt-4o status=ok task-runner"
    assert Redactor().redact(text) == text


def test_structured_fields_are_masked_by_name_and_value() -> None:
    redactor = Redactor()
    assert redactor.redact_value("authorization", "anything") == MASK
    assert redactor.redact_value("messages", [{"content": "hi"}]) == MASK
    assert redactor.redact_value("headers", {"x-api-key": "v", "accept": "json"}) == {"x-api-key": MASK, "accept": "json"}
    assert redactor.redact_value("note", f"key {OPENAI_KEY}") == f"key {MASK}"
    assert redactor.redact_value("prompt_tokens", 12) == 12


def test_every_log_record_is_redacted_at_creation_including_tracebacks() -> None:
    redaction.install()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # a plain handler: only the record factory protects it
    logger = logging.getLogger("tollgate.test.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.warning("calling upstream with %s", OPENAI_KEY)
        try:
            raise RuntimeError(f"401 for key {TOLLGATE_KEY}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "calling upstream with" in output and "RuntimeError" in output
    assert find_leaks(output, [OPENAI_KEY, TOLLGATE_KEY]) == []


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("tollgate.access", logging.INFO, __file__, 1, "chat request", None, None)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_fields_and_mask_secret_ones() -> None:
    line = JsonFormatter(Redactor()).format(
        _record(request_id="req_1", cost_micros=42, ttft_ms=None, authorization=f"Bearer {TOLLGATE_KEY}",
                body={"messages": [{"content": "secret plans"}]})
    )
    fields = orjson.loads(line)
    assert fields["logger"] == "tollgate.access" and fields["message"] == "chat request"
    assert (fields["request_id"], fields["cost_micros"], fields["ttft_ms"]) == ("req_1", 42, None)
    assert fields["authorization"] == MASK and fields["body"] == {"messages": MASK}
    assert TOLLGATE_KEY not in line and "secret plans" not in line


def test_json_lines_mask_names_inside_text_fields_and_the_message() -> None:
    record = _record(upstream_headers="authorization: opaque-value, accept: json", note="no secrets here")
    record.msg = 'retrying body {"messages": [{"role": "user", "content": "my secret plan"}]}'
    fields = orjson.loads(JsonFormatter(Redactor()).format(record))
    assert fields["upstream_headers"] == f"authorization: {MASK}, accept: json"
    assert fields["note"] == "no secrets here" and "secret plan" not in fields["message"]


def test_text_lines_append_fields_as_pairs() -> None:
    line = TextFormatter(Redactor()).format(_record(request_id="req_1", status="ok"))
    assert line.endswith("tollgate.access: chat request request_id=req_1 status=ok")


def test_environment_overrides_level_and_format_and_ignores_nonsense() -> None:
    base = LoggingSettings(level="info", format="json")
    assert effective_settings(base, {"TOLLGATE_LOG_LEVEL": "DEBUG", "TOLLGATE_LOG_FORMAT": "text"}) == LoggingSettings("debug", "text")
    assert effective_settings(base, {"TOLLGATE_LOG_LEVEL": "loud"}) == base


def test_configure_logging_replaces_only_its_own_handler() -> None:
    root = logging.getLogger()
    before = [h for h in root.handlers if not getattr(h, "_tollgate_handler", False)]
    level = root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        configure_logging(LoggingSettings("info", "json"), stream=first)
        configure_logging(LoggingSettings("warning", "text"), stream=second)
        assert len(root.handlers) == len(before) + 1 and all(h in root.handlers for h in before)  # one of ours
        logging.getLogger("tollgate.test.configure").warning("visible %s", OPENAI_KEY)
        assert first.getvalue() == "" and "visible [REDACTED]" in second.getvalue()
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)
