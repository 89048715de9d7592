"""Log output: JSON lines (one object per record) or text, both redacted, configured once at start."""

from __future__ import annotations

import datetime
import logging
import sys
from collections.abc import Mapping
from typing import IO, Any

import orjson

from gateway_core.observability import redaction
from gateway_core.observability.log_batch import BatchingHandler
from gateway_core.observability.settings import LOG_FORMATS, LOG_LEVELS, LoggingSettings

LEVEL_ENV = "TOLLGATE_LOG_LEVEL"
FORMAT_ENV = "TOLLGATE_LOG_FORMAT"
# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# Third-party loggers that narrate routine work at INFO on the hot path.
CHATTY_LOGGERS = ("alembic", "httpx", "httpcore", "uvicorn.access")
_OURS = "_tollgate_handler"


def record_fields(record: logging.LogRecord, redactor: redaction.Redactor) -> dict[str, Any]:
    """The `extra=` fields of a record, masked by name; the caller redacts the formatted line."""
    standard, mask = _STANDARD_ATTRS, redactor.mask_names
    return {name: mask(name, value) for name, value in record.__dict__.items() if name not in standard and name[0] != "_"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's fields, any traceback."""

    def __init__(self, redactor: redaction.Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _utc_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _message(record, self._redactor),
        }
        line.update(record_fields(record, self._redactor))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = self._redactor.redact(record.exc_text)
        return self._dump(line)

    def format_info(self, created: float, logger: str, message: str, fields: Mapping[str, Any]) -> str:
        """The line format() gives an INFO record of logger with this message and these `extra=` fields,
        built without a LogRecord (see json_lines); message is redacted here, as the record factory would."""
        redactor = self._redactor
        line: dict[str, Any] = {
            "time": _utc_time(created),
            "level": "info",
            "logger": logger,
            "message": redactor.redact(message),
        }
        unmasked = _UNMASKED_NAMES
        for name, value in fields.items():
            # _masked's first answers inline (most fields of a hot line): a call per field costs more than the test.
            kind = type(value)
            if name in unmasked and (
                kind is int or value is None or (kind is str and "=" not in value and ":" not in value)
            ):
                line[name] = value
            else:
                line[name] = _masked(redactor, name, value)
        return self._dump(line)

    def _dump(self, line: dict[str, Any]) -> str:
        text = orjson.dumps(line, default=str).decode()
        # Names were masked field by field above; this pass catches key shapes and configured values.
        return self._redactor.redact(text, names=False)


def _masked(redactor: redaction.Redactor, name: str, value: Any) -> Any:
    """redactor.mask_names(name, value), with its answer for the common fields of a hot line
    (a name that is not masked, a number or None or a plain string, a flat dict of those) given
    without the calls; anything else goes to mask_names itself."""
    kind = type(value)
    if name in _UNMASKED_NAMES:
        if kind is int or value is None or kind is bool or kind is float:
            return value
        if kind is str:
            return value if ("=" not in value and ":" not in value) else redactor.mask_names(name, value)
        if kind is dict:
            return _masked_dict(redactor, value)
    return redactor.mask_names(name, value)


def _masked_dict(redactor: redaction.Redactor, value: dict[Any, Any]) -> dict[str, Any]:
    """mask_names of a dict field, entry by entry through _masked (its first answers inline, as in
    format_info: the upstream_attempt line's nine fields cost a call each otherwise)."""
    masked: dict[str, Any] = {}
    unmasked = _UNMASKED_NAMES
    for key, item in value.items():
        name = key if type(key) is str else str(key)
        kind = type(item)
        if name in unmasked and (
            kind is int or item is None or kind is bool or (kind is str and "=" not in item and ":" not in item)
        ):
            masked[name] = item
        else:
            masked[name] = _masked(redactor, name, item)
    return masked


# Field names of the access and upstream_attempt lines; none is a name redaction masks.
_UNMASKED_NAMES = frozenset({
    "request_id", "account_id", "key_id", "model", "provider", "route", "mode", "status", "prompt_tokens",
    "completion_tokens", "cost_micros", "latency_ms", "ttft_ms", "upstream_ms", "upstream_attempt", "attempt",
    "outcome", "upstream_status", "streamed",
}) - redaction.masked_names()

_second_cache: list[tuple[int, str]] = [(-1, "")]


def _utc_time(created: float) -> str:
    """created as ISO 8601 UTC with milliseconds, e.g. 2026-01-02T03:04:05.678+00:00.

    The same text datetime.isoformat(timespec="milliseconds") gives, with the
    date-and-second part formatted once per second instead of once per line.
    """
    second = int(created)
    # As datetime.fromtimestamp: the fraction rounded (half to even) to microseconds, then cut to ms.
    micros = round((created - second) * 1e6)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached_second, prefix = _second_cache[0]
    if cached_second != second:
        prefix = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache[0] = (second, prefix)
    return prefix + _MILLISECOND_SUFFIXES[micros // 1000]


# ".000+00:00" ... ".999+00:00": the end of every timestamp, formatted once.
_MILLISECOND_SUFFIXES = tuple(f".{ms:03d}+00:00" for ms in range(1000))


def _message(record: logging.LogRecord, redactor: redaction.Redactor) -> str:
    """The record's message, redacted: at creation (by the installed record factory) or now.

    The whole formatted line is redacted once more (shapes and literal values) either way.
    """
    message = record.getMessage()
    if message is getattr(record, redaction.REDACTED_MARK, None):  # the very string redacted at creation
        return message
    return redactor.redact(message)


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...`, for a human at a terminal."""

    def __init__(self, redactor: redaction.Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = record_fields(record, self._redactor)
        if fields:
            head, newline, rest = text.partition("\n")
            pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
            text = f"{head} {pairs}{newline}{rest}"
        return self._redactor.redact(text)


def _text_value(value: Any) -> str:
    if isinstance(value, (Mapping, list)):
        return orjson.dumps(value, default=str).decode()
    return str(value)


def effective_settings(settings: LoggingSettings, env: Mapping[str, str]) -> LoggingSettings:
    """The settings with TOLLGATE_LOG_LEVEL / TOLLGATE_LOG_FORMAT applied (invalid values ignored)."""
    level = env.get(LEVEL_ENV, "").lower()
    format_ = env.get(FORMAT_ENV, "").lower()
    return LoggingSettings(
        level=level if level in LOG_LEVELS else settings.level,
        format=format_ if format_ in LOG_FORMATS else settings.format,
    )


def make_formatter(format_: str, redactor: redaction.Redactor) -> logging.Formatter:
    return JsonFormatter(redactor) if format_ == "json" else TextFormatter(redactor)


def _stderr() -> IO[str]:
    """Whatever sys.stderr is at the time of writing (test runners and click swap it)."""
    return sys.stderr


def configure_logging(settings: LoggingSettings, *, stream: IO[str] | None = None) -> redaction.Redactor:
    """Routes every log record of the process to stream (stderr), redacted, at the configured level.

    Stderr (the server's own output) is written in batches, one write per
    ~50 ms instead of one per line (see log_batch); an explicit stream gets
    each line at once. Replaces only a handler an earlier call installed;
    others (a test runner's) stay.
    """
    redactor = redaction.install()
    handler: logging.Handler = BatchingHandler(_stderr) if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(settings.format, redactor))
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _OURS, False):
            root.removeHandler(old)
            old.flush()  # a batching handler's pending lines go out before the new handler's
    root.addHandler(handler)
    level = getattr(logging, settings.level.upper())
    root.setLevel(level)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, level))
    return redactor
