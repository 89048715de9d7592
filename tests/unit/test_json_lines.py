"""json_lines: the access and upstream_attempt lines written without a LogRecord are the very lines
logger.info would write, redaction included, and the shortcut steps aside whenever anything else listens."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from gateway_core.observability import json_lines, redaction
from gateway_core.observability.log_batch import BatchingHandler
from gateway_core.observability.log_format import JsonFormatter, TextFormatter

SECRET_LITERAL = "opaque-configured-upstream-secret"
ACCESS_FIELDS = {
    "request_id": "req_1", "account_id": "acct_1", "key_id": "key_1", "model": "m", "provider": "p",
    "route": "p/upstream-model", "mode": "unary", "status": "ok", "prompt_tokens": 12, "completion_tokens": 3,
    "cost_micros": 42, "latency_ms": 7, "ttft_ms": None, "upstream_ms": 5,
}
# Values a careless caller could pass: a key shape, a configured literal, `name: value` pairs, a masked name.
NASTY_FIELDS = {
    "request_id": "sk-tg-abcdefghijklmnop", "route": f"p/{SECRET_LITERAL}", "status": "authorization: Bearer xyz",
    "password": "hunter22", "nested": {"token": "t0ps3cret", "list": ["https://h/p?key=abcdef", 1, None]}, "ratio": 0.5,
}


@pytest.fixture
def only_batching_json() -> Iterator[tuple[BatchingHandler, io.StringIO]]:
    """The root logger as configure_logging leaves it: one batching JSON handler, nothing else.

    Swapped in by the test body (see `alone`): pytest adds its capturing handlers for the call phase.
    """
    redactor = redaction.install()
    redactor.protect([SECRET_LITERAL])
    out = io.StringIO()
    handler = BatchingHandler(lambda: out)
    handler.setFormatter(JsonFormatter(redactor))
    yield handler, out


@contextlib.contextmanager
def alone(handler: logging.Handler) -> Iterator[None]:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers = saved
        root.setLevel(level)


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    out.seek(0)
    out.truncate()
    for line in lines:
        assert isinstance(line["time"], str) and line["time"].endswith("+00:00")
        del line["time"]  # the only part that differs between two calls
    return lines


def _both_ways(out: io.StringIO, logger: logging.Logger, message: str, fields: dict[str, object],
               *args: object) -> tuple[list[dict[str, object]], list[dict[str, object]], str]:
    """(lines of the shortcut, lines of logger.info, raw text of both)."""
    assert json_lines.info_line(logger, message % args[0] if args else message, fields)
    fast = out.getvalue()
    fast_lines = _lines(out)
    logger.info(message, *args, extra=fields)
    slow = out.getvalue()
    return fast_lines, _lines(out), fast + slow


@pytest.mark.parametrize("fields", [ACCESS_FIELDS, NASTY_FIELDS], ids=["access", "nasty"])
def test_the_shortcut_writes_what_logger_info_writes_field_for_field_in_order(
    only_batching_json: tuple[BatchingHandler, io.StringIO], fields: dict[str, object]
) -> None:
    handler, out = only_batching_json
    with alone(handler):
        fast, slow, _ = _both_ways(out, logging.getLogger("tollgate.access"), "chat request", fields)
    assert fast == slow
    assert list(fast[0]) == list(slow[0]) == ["level", "logger", "message", *fields]
    assert fast[0]["logger"] == "tollgate.access" and fast[0]["level"] == "info"


def test_the_attempt_line_with_its_message_and_nested_fields_matches_and_secrets_are_masked(
    only_batching_json: tuple[BatchingHandler, io.StringIO],
) -> None:
    handler, out = only_batching_json
    fields = {"request_id": "sk-tg-leakyleakyleaky", "model": "m", "provider": "p", "route": SECRET_LITERAL,
              "attempt": 1, "outcome": "ok", "latency_ms": 3, "upstream_status": None, "streamed": False,
              "authorization": "Bearer zzz-secret-zzz", "note": "api_key: k-secret-k", 7: True}
    message = "upstream_attempt request_id=%(request_id)s route=%(route)s attempt=%(attempt)d"
    logger = logging.getLogger("tollgate.routing")
    with alone(handler):
        assert json_lines.info_line(logger, message % fields, {"upstream_attempt": fields})
        fast_text = out.getvalue()
        fast = _lines(out)
        logger.info(message, fields, extra={"upstream_attempt": fields})
        slow_text = out.getvalue()
    assert fast == _lines(io.StringIO(slow_text))
    for text in (fast_text, slow_text):
        assert "sk-tg-leaky" not in text and SECRET_LITERAL not in text
        assert "zzz-secret-zzz" not in text and "k-secret-k" not in text
        assert redaction.MASK in text


def test_nasty_values_are_redacted_on_the_shortcut(only_batching_json: tuple[BatchingHandler, io.StringIO]) -> None:
    handler, out = only_batching_json
    with alone(handler):
        assert json_lines.info_line(logging.getLogger("tollgate.access"), "chat request", NASTY_FIELDS)
    text = out.getvalue()
    for secret in ("sk-tg-abcdefghijklmnop", SECRET_LITERAL, "xyz", "hunter22", "t0ps3cret", "abcdef"):
        assert secret not in text


def test_another_handler_anywhere_on_the_path_gets_ordinary_records(
    only_batching_json: tuple[BatchingHandler, io.StringIO], caplog: pytest.LogCaptureFixture
) -> None:
    handler, out = only_batching_json
    caplog.set_level(logging.INFO, logger="tollgate.access")
    root = logging.getLogger()
    with alone(handler):
        root.addHandler(caplog.handler)  # where caplog's handler sits
        assert not json_lines.info_line(logging.getLogger("tollgate.access"), "chat request", ACCESS_FIELDS)
        root.removeHandler(caplog.handler)
        assert out.getvalue() == "" and not caplog.records

        extra = logging.StreamHandler(io.StringIO())
        logging.getLogger("tollgate").addHandler(extra)
        try:
            assert not json_lines.info_line(logging.getLogger("tollgate.access"), "chat request", ACCESS_FIELDS)
        finally:
            logging.getLogger("tollgate").removeHandler(extra)
        assert json_lines.info_line(logging.getLogger("tollgate.access"), "chat request", ACCESS_FIELDS)


def test_levels_filters_formats_and_factories_each_turn_the_shortcut_off(
    only_batching_json: tuple[BatchingHandler, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, out = only_batching_json
    with alone(handler):
        logger = logging.getLogger("json_lines_test.access")  # no level of its own or its parent's (tollgate has one)

        def refused() -> bool:
            return not json_lines.info_line(logger, "chat request", ACCESS_FIELDS)

        assert not refused()
        _lines(out)
        logging.getLogger().setLevel(logging.WARNING)
        assert refused()
        logging.getLogger().setLevel(logging.INFO)

        handler.setLevel(logging.WARNING)
        assert refused()
        handler.setLevel(logging.NOTSET)

        drop_all = logging.Filter("nothing-matches")
        for owner in (logger, logging.getLogger("json_lines_test"), handler):
            owner.addFilter(drop_all)
            assert refused()
            owner.removeFilter(drop_all)

        formatter = handler.formatter
        handler.setFormatter(TextFormatter(redaction.install()))
        assert refused()
        handler.setFormatter(formatter)

        logger.propagate = False
        try:
            assert refused()  # the handler is not on the path any more
        finally:
            logger.propagate = True

        monkeypatch.setattr(logging, "_logRecordFactory", lambda *a, **k: logging.LogRecord(*a, **k))
        assert refused()
        monkeypatch.undo()
        assert not refused()
        assert out.getvalue().count("\n") == 1  # only the two accepted calls wrote, one line each after the reset
