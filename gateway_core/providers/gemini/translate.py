"""The Gemini translator: gateway.v1 <-> Gemini generateContent wire JSON. Pure.

No httpx, no grpc, no I/O, no logging. The pieces live in small modules:
request and contents (to_request), response (from_response), stream
(StreamTranslator), error_map (map_error) and call_ids (the tool-call ids that
carry thought signatures); this module is the one place callers import from.
"""

from __future__ import annotations

from gateway_core.providers.gemini.call_ids import new_call_id, signature_of
from gateway_core.providers.gemini.error_map import error_in_body, error_object, map_error, retry_delay, scrub
from gateway_core.providers.gemini.request import to_request
from gateway_core.providers.gemini.response import from_response, gemini_to_finish_reason, malformed, usage_from
from gateway_core.providers.gemini.stream import StreamTranslator

__all__ = [
    "StreamTranslator",
    "error_in_body",
    "error_object",
    "from_response",
    "gemini_to_finish_reason",
    "malformed",
    "map_error",
    "new_call_id",
    "retry_delay",
    "scrub",
    "signature_of",
    "to_request",
    "usage_from",
]
