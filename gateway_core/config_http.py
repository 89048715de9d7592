"""The `[http]` section: how much one HTTP client may ask of the facade, and for how long.

The facade enforces these (http_facade.edge_limits.EdgeLimits has the same
fields and defaults; a unit test keeps them equal); the core only parses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

# orjson refuses deeper documents itself, and the facade's depth check recurses.
MAX_JSON_DEPTH = 512
# OpenAI's own ceiling on `n`; the facade's converter refuses more whatever is set.
MAX_N = 128


@dataclass(frozen=True)
class HttpSettings:
    """Size, shape and time bounds on each request to the HTTP facade."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_json_depth: int = 64
    max_array_items: int = 10_000
    max_messages: int = 2048
    max_string_chars: int = 10 * 1024 * 1024
    max_n: int = MAX_N
    max_tokens_ceiling: int = 1_000_000
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 60.0
    keep_alive_seconds: float = 5.0


HTTP_KEYS = frozenset(HttpSettings.__dataclass_fields__)
_UPPER_BOUNDS = {"max_json_depth": MAX_JSON_DEPTH, "max_n": MAX_N}


def http_settings(table: Mapping[str, Any], add_problem: Any) -> HttpSettings:
    """Validates the [http] table; add_problem(key, message) records each fault."""
    values: dict[str, Any] = {}
    for field in fields(HttpSettings):
        if field.name not in table:
            continue
        value = table[field.name]
        key = f"http.{field.name}"
        whole = field.name.startswith("max_")
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or value <= 0:
            add_problem(key, "must be a positive whole number" if whole else "must be a positive number")
            continue
        upper = _UPPER_BOUNDS.get(field.name)
        if upper is not None and value > upper:
            add_problem(key, f"must be at most {upper}")
            continue
        values[field.name] = value if whole else float(value)
    return HttpSettings(**values)
