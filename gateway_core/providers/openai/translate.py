"""The OpenAI translator: gateway.v1 <-> OpenAI chat.completions wire JSON. Pure.

No httpx, no grpc, no I/O, no logging. The pieces live in small modules:
request (to_request), response (from_response, StreamTranslator) and
error_map (map_error); this module is the one place callers import from.
"""

from __future__ import annotations

from gateway_core.providers.openai.error_map import error_in_body, map_error, parse_retry_after, scrub
from gateway_core.providers.openai.request import to_request
from gateway_core.providers.openai.response import (
    StreamTranslator,
    from_response,
    openai_to_finish_reason,
    usage_from,
)

__all__ = [
    "StreamTranslator",
    "error_in_body",
    "from_response",
    "map_error",
    "openai_to_finish_reason",
    "parse_retry_after",
    "scrub",
    "to_request",
    "usage_from",
]
