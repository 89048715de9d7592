"""EdgeLimits: how much a single HTTP client may ask of the facade, and for how long.

The facade's own copy of the `[http]` configuration section (the facade does
not import the core's config); gateway_core.config_http holds the parsed values
and a unit test keeps the two field lists and defaults identical.
"""

from __future__ import annotations

from dataclasses import dataclass

# OpenAI's own limits, where they publish one: a string may hold 10 MiB
# ("string_above_max_length"), `n` is at most 128, `tools` at most 128 entries.
OPENAI_MAX_STRING_CHARS = 10 * 1024 * 1024
OPENAI_MAX_N = 128
OPENAI_MAX_TOOLS = 128


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """Bounds on one request's size, shape and timing; every field is an `[http]` key."""

    # Body bytes (413 beyond); counted while reading, so chunked bodies are cut off too.
    max_body_bytes: int = 32 * 1024 * 1024
    # Request line plus headers (431 beyond).
    max_header_bytes: int = 16 * 1024
    # Nesting of JSON arrays and objects in a body.
    max_json_depth: int = 64
    # Items in any one JSON array of a body (tools, content parts, a schema's enum, ...).
    max_array_items: int = 10_000
    # Entries in `messages`.
    max_messages: int = 2048
    # Characters in any one JSON string of a body (content, image data URLs, ...).
    max_string_chars: int = OPENAI_MAX_STRING_CHARS
    # Largest `n` (choices per request).
    max_n: int = OPENAI_MAX_N
    # Largest `max_tokens` / `max_completion_tokens` a client may ask for.
    max_tokens_ceiling: int = 1_000_000
    # From a connection's first byte of a request until its headers are complete.
    header_timeout_seconds: float = 10.0
    # From the end of the headers until the whole body has arrived.
    body_timeout_seconds: float = 60.0
    # How long an idle keep-alive connection stays open between requests.
    keep_alive_seconds: float = 5.0

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) <= 0:
                raise ValueError(f"EdgeLimits.{name} must be positive")
        if self.max_json_depth > MAX_JSON_DEPTH:
            raise ValueError(f"EdgeLimits.max_json_depth must be at most {MAX_JSON_DEPTH}")


# orjson refuses deeper documents itself, and the depth check recurses.
MAX_JSON_DEPTH = 512
