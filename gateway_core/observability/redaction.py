"""Keeps secrets and prompts out of logs: by shape, by field name, and by value.

Logging is process-wide, so is its redaction: `install()` puts a Redactor in
front of every log record the process creates (a record factory), before any
handler or formatter sees it, and the formatters in `log_format` redact their
whole output once more. `protect()` adds literal values (configured provider
keys, the admin token) that have no recognizable shape.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "[REDACTED]"

# Shapes of credentials, each with cheap substring tests (on the lower-cased text) that must pass before its regex runs
# (most log lines contain none, and this runs on every line): our keys (sk-tg-...),
# OpenAI/Anthropic/DeepSeek style (sk-..., sk-ant-...), Google API keys (AIza...), bearer and
# basic credentials, and key=... in URLs (Gemini's ?key=).
_SHAPES = (
    (("sk-",), re.compile(r"\bsk-[A-Za-z0-9_\-]{2,}")),
    (("aiza",), re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}")),
    (("bearer", "basic", "digest"),
     re.compile(r"(?i)(\b(?:bearer|basic|digest)\s+)[^\s\"',;]+")),
    (("key=", "token="), re.compile(r"(?i)([?&](?:key|api_key|token)=)[^&\s\"']+")),
)
# Header and setting names whose values are secrets, however they look.
SECRET_NAMES = (
    "authorization", "proxy-authorization", "x-api-key", "x-goog-api-key", "api-key", "api_key", "apikey",
    "admin_token", "token", "secret", "password", "pepper", "cookie",
)
# Request fields that carry prompts and answers: the user's data, never an operator's business.
PROMPT_NAMES = (
    "messages", "content", "prompt", "system", "contents", "parts", "input", "instructions", "text",
    "system_instruction", "tool_calls", "arguments",
)
# Any name followed by `:` or `=` (quoted or not); whether it is a secret's is a set lookup,
# far cheaper than one case-insensitive alternation tried at every position.
_NAMED_VALUE = re.compile(r"([\"']?)\b([A-Za-z][A-Za-z0-9_\-]*)\1\s*[:=]\s*")
_SECRET_NAME_SET = frozenset(SECRET_NAMES)
_PROMPT_NAME_SET = frozenset(PROMPT_NAMES)
_MASKED_NAMES = _SECRET_NAME_SET | _PROMPT_NAME_SET
# The masked names that hold no other masked name: a text holds some masked name exactly when it
# holds one of these ("proxy-authorization" holds "authorization", "admin_token" "token", ...), so
# redact() asks 19 substring questions instead of 25 (the largest cost of a log line with `=` in it).
_NAME_NEEDLES = tuple(sorted(
    name for name in _MASKED_NAMES if not any(other != name and other in name for other in _MASKED_NAMES)
))


def masked_names() -> frozenset[str]:
    """The lower-case field names whose values are always masked (secrets and prompts)."""
    return _MASKED_NAMES


# Field values with no text inside, returned as they are once their name is not a masked one.
_PLAIN_TYPES = frozenset({int, float, bool, type(None)})
# Literal values shorter than this would mask ordinary words; they are still masked by shape or name.
_MIN_LITERAL = 5


class Redactor:
    """Masks secrets in text and in structured log fields. Safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._literals: frozenset[str] = frozenset()
        self._literal_pattern: re.Pattern[str] | None = None

    def protect(self, values: Iterable[str]) -> None:
        """Masks these exact values wherever they appear (configured keys with no known shape)."""
        new = {v for v in values if isinstance(v, str) and len(v) >= _MIN_LITERAL}
        with self._lock:
            if new <= self._literals:
                return
            self._literals = self._literals | new
            # Longest first, so a value containing another is masked whole.
            ordered = sorted(self._literals, key=len, reverse=True)
            self._literal_pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def redact(self, text: str, *, names: bool = True) -> str:
        """The text with every secret and prompt value replaced by MASK.

        names=False skips masking values by their name (for text whose names were masked already).
        """
        # Every pass below first asks whether it can match at all (substring tests, plain loops
        # rather than any() over generators): this runs on every log line, most of which hold nothing.
        pattern = self._literal_pattern
        if pattern is not None:
            for value in self._literals:  # a substring test beats the alternation regex at every position
                if value in text:
                    text = pattern.sub(MASK, text)
                    break
        if text.isascii():
            # In ASCII text a `(?i)` keyword matches only its ASCII case variants, which lower() maps
            # onto the needle: a shape whose needles are all absent cannot match.
            lowered = text.lower()
            for needles, shape in _SHAPES:
                for needle in needles:
                    if needle in lowered:
                        text = shape.sub(_keep_prefix, text)
                        lowered = text.lower()
                        break
        else:
            # `(?i)` also matches look-alikes lower() leaves alone or splits (ſ for s, ı and İ for i):
            # no substring test is sound here, so every shape runs (rare: log lines are mostly ASCII).
            for _, shape in _SHAPES:
                text = shape.sub(_keep_prefix, text)
            lowered = text.lower()
        if not names or ("=" not in text and ":" not in text):
            return text  # a `name: value` pair needs its `:` or `=`
        for name in _NAME_NEEDLES:
            if name in lowered:
                return _mask_named_values(text)
        return text  # no masked name anywhere in the text

    def mask_names(self, name: str, value: Any) -> Any:
        """A structured field masked by its name (and nested names) only; its text is left for redact()
        on the whole formatted line, which is one pass instead of one per field."""
        lowered = name.lower()
        if lowered in _MASKED_NAMES:
            return MASK
        if type(value) in _PLAIN_TYPES:  # most fields (counts, flags): skip the slower ABC checks below
            return value
        if type(value) is str:  # most other fields (ids, names): same answer as the isinstance branch below
            return self.redact(value) if ("=" in value or ":" in value) else value
        if isinstance(value, Mapping):
            return {str(k): self.mask_names(str(k), v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.mask_names("", v) for v in value]
        if isinstance(value, str) and ("=" in value or ":" in value):
            return self.redact(value)  # text with `name: value` pairs inside (a header dump, a body)
        return value

    def redact_value(self, name: str, value: Any) -> Any:
        """A structured field's value: masked whole when its name says secret or prompt."""
        lowered = name.lower()
        if lowered in _SECRET_NAME_SET or lowered in _PROMPT_NAME_SET:
            return MASK
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Mapping):
            return {str(k): self.redact_value(str(k), v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact_value("", v) for v in value]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return self.redact(str(value))


def _keep_prefix(match: re.Match[str]) -> str:
    return (match.group(1) if match.groups() else "") + MASK


def _mask_named_values(text: str) -> str:
    """Masks the value after `name:` / `name=` for secret and prompt names, whole brackets included."""
    out: list[str] = []
    position = 0
    for match in _NAMED_VALUE.finditer(text):
        if match.start() < position:
            continue  # inside a value already masked
        if match.group(2).lower() not in _MASKED_NAMES:
            continue
        end = _value_end(text, match.end())
        if end == match.end():
            continue
        out.append(text[position:match.end()])
        first = text[match.end()]
        # Quoted, so JSON stays JSON: a masked string keeps its quotes, a masked block becomes a string.
        out.append(f"{first}{MASK}{first}" if first in "\"'" else f'"{MASK}"' if first in "[{(" else MASK)
        position = end
    out.append(text[position:])
    return "".join(out)


def _value_end(text: str, start: int) -> int:
    """Where the value starting at text[start] ends: a quoted string, a bracketed block, or a word."""
    if start >= len(text):
        return start
    first = text[start]
    if first in "\"'":
        return _string_end(text, start)
    if first in "[{(":
        return _block_end(text, start)
    word = re.match(r"[^\s,;}\])]+", text[start:])
    return start + (word.end() if word else 0)


def _string_end(text: str, start: int) -> int:
    quote, i = text[start], start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    return len(text)


def _block_end(text: str, start: int) -> int:
    depth, i = 0, start
    while i < len(text):
        char = text[i]
        if char in "\"'":
            i = _string_end(text, i)
            continue
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)  # unbalanced (a truncated body): mask to the end


# Holds the message redact_record produced (names included), so a formatter that finds the
# message unchanged since need not redact it again; starts with "_", so it is no log field.
REDACTED_MARK = "_tollgate_redacted"

_installed: Redactor | None = None
# The installed factory when it wraps logging.LogRecord itself (no other factory adds attributes).
_plain_factory: Any = None
_install_lock = threading.Lock()


def install() -> Redactor:
    """Puts the process's Redactor in front of every log record; idempotent; returns it."""
    global _installed
    with _install_lock:
        if _installed is not None:
            return _installed
        redactor = Redactor()
        previous = logging.getLogRecordFactory()

        def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            redact_record(record, redactor)
            return record

        logging.setLogRecordFactory(redacting_factory)
        _installed = redactor
        if previous is logging.LogRecord:  # records carry nothing but the standard attributes and extras
            global _plain_factory
            _plain_factory = redacting_factory
        return redactor


def plain_factory_installed() -> bool:
    """Whether records are made by this module's factory around the plain LogRecord, and nothing else."""
    return _plain_factory is not None and logging.getLogRecordFactory() is _plain_factory


def protect(values: Iterable[str]) -> None:
    """Masks these literal values in every log line of this process (installs redaction if needed)."""
    install().protect(values)


def redact_record(record: logging.LogRecord, redactor: Redactor) -> None:
    """Redacts a record's message and traceback in place (extras are redacted by the formatters)."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string: keep the template alone
        message = str(record.msg)
    record.msg = redactor.redact(message)
    record.args = None
    setattr(record, REDACTED_MARK, record.msg)
    if record.exc_info and not record.exc_text:
        record.exc_text = redactor.redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redactor.redact(record.stack_info)
