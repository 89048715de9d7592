"""The OpenAI translator: gateway.v1 <-> OpenAI chat.completions wire JSON. Pure.

No httpx, no grpc, no I/O, no logging. The pieces live in small modules:
request (to_request), adapt (one vendor's dialect of a body), vendors (the
vendor table), response (from_response, StreamTranslator) and error_map
(map_error); this module is the one place callers import from.
"""

from __future__ import annotations

from gateway_core.providers.openai.adapt import mistral_tool_call_id
from gateway_core.providers.openai.error_map import error_in_body, map_error, parse_retry_after, scrub
from gateway_core.providers.openai.request import PreparedRequest, prepare_request, to_request
from gateway_core.providers.openai.response import (
    StreamTranslator,
    from_response,
    openai_to_finish_reason,
    usage_from,
)
from gateway_core.providers.openai.vendors import (
    PASSTHROUGH,
    PROFILES,
    Dialect,
    VendorProfile,
    detect_vendor,
    dialect_for,
)

__all__ = [
    "PASSTHROUGH",
    "PROFILES",
    "Dialect",
    "PreparedRequest",
    "StreamTranslator",
    "VendorProfile",
    "detect_vendor",
    "dialect_for",
    "error_in_body",
    "from_response",
    "map_error",
    "mistral_tool_call_id",
    "openai_to_finish_reason",
    "parse_retry_after",
    "prepare_request",
    "scrub",
    "to_request",
    "usage_from",
]
