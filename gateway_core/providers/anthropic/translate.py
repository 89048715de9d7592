"""The Anthropic translator: gateway.v1 <-> Anthropic Messages wire JSON. Pure.

No httpx, no grpc, no I/O, no logging. The pieces live in small modules:
messages and request (to_request), response (from_response), stream
(StreamTranslator) and error_map (map_error, error_in_event); this module is
the one place callers import from.
"""

from __future__ import annotations

from gateway_core.providers.anthropic.error_map import error_in_event, map_error
from gateway_core.providers.anthropic.request import response_tool_name, to_request
from gateway_core.providers.anthropic.response import anthropic_to_finish_reason, from_response, usage_from
from gateway_core.providers.anthropic.stream import StreamTranslator

__all__ = [
    "StreamTranslator",
    "anthropic_to_finish_reason",
    "error_in_event",
    "from_response",
    "map_error",
    "response_tool_name",
    "to_request",
    "usage_from",
]
