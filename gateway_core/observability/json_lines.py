"""The two INFO lines every chat request logs, written without the stdlib's LogRecord machinery.

`logger.info(..., extra=...)` costs the event loop about 20 µs per line: the
caller's frame walk (findCaller), a LogRecord, the redacting record factory,
Handler.handle's filtering and locking. When the only place such a line can go
is the batching JSON handler `configure_logging` installs (how `tollgate serve`
runs), `info_line` builds the very same line with that handler's formatter
(JsonFormatter.format_info: same fields, order, masking and redaction) and
appends it to the handler's buffer. In any other set-up (another handler
anywhere on the logger's path, e.g. pytest's caplog or a file handler, any
filter, text format, another record factory, the level disabled) it says so and
the caller logs the normal way, so those handlers see ordinary records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from gateway_core.observability import redaction
from gateway_core.observability.log_batch import BatchingHandler
from gateway_core.observability.log_format import JsonFormatter

_INFO = logging.INFO


def info_line(logger: logging.Logger, message: str, fields: Mapping[str, Any]) -> bool:
    """Writes logger's INFO line (message, `extra=` fields) straight to the batching JSON handler.

    False when it cannot do so exactly as logger.info would; then nothing was
    written and the caller logs normally (which also handles a disabled level).
    """
    handler = _only_batching_json_handler(logger)
    if handler is None:
        return False
    formatter: JsonFormatter = handler.formatter  # type: ignore[assignment]  # checked by the lookup
    try:
        line = formatter.format_info(time.time(), logger.name, message, fields)
    except Exception:  # noqa: BLE001 - let the normal path format (and report) it
        return False
    handler.emit_line(line)
    return True


def _only_batching_json_handler(logger: logging.Logger) -> BatchingHandler | None:
    """The one handler an INFO record of logger would reach, if that is all it would meet on the way:
    a BatchingHandler with a JsonFormatter, no filters, records made by the plain redacting factory."""
    if not logger.isEnabledFor(_INFO) or logger.disabled or not redaction.plain_factory_installed():
        return None
    found: BatchingHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if (
                found is not None
                or type(handler) is not BatchingHandler
                or type(handler.formatter) is not JsonFormatter
                or handler.filters
                or handler.level > _INFO
            ):
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    return found
