"""Cases for bench/instructions.py: each returns a function running one piece of a unary request once.

What they work on is what bench/micro_stream.py's unary request makes the
gateway work on: its body, the core request converted from it, the fake
upstream's answer, the access and upstream_attempt lines of one request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

BODY = b'{"model":"bench-model","messages":[{"role":"user","content":"Say something short."}],"max_tokens":1024,"stream":false}'
COMPLETION = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"' + b"tok " * 16 + b'"},'
    b'"finish_reason":"stop","logprobs":null}],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":16,"total_tokens":28}}'
)
REQUEST_ID = "req_019ac0ffee0123456789abcdef01"
ATTEMPT = {
    "request_id": REQUEST_ID, "model": "bench-model", "provider": "upstream", "route": "bench-model",
    "attempt": 1, "outcome": "ok", "latency_ms": 3, "upstream_status": None, "streamed": False,
}
ACCESS = {
    "request_id": REQUEST_ID, "account_id": "acct_0123456789abcdef", "key_id": "key_0123456789abcdef",
    "model": "bench-model", "provider": "upstream", "route": "bench-model", "mode": "unary", "status": "ok",
    "prompt_tokens": 12, "completion_tokens": 16, "cost_micros": 12, "latency_ms": 4, "ttft_ms": None,
    "upstream_ms": 2,
}
Case = Callable[[], Callable[[], Any]]


def _logging() -> None:
    """JSON lines to a batching handler on stderr, secrets of the bench's config protected (as `serve`)."""
    from gateway_core.observability import redaction
    from gateway_core.observability.log_format import configure_logging
    from gateway_core.observability.settings import LoggingSettings

    configure_logging(LoggingSettings(level="info", format="json"))
    redaction.protect(["sk-upstream-bench", "bench-admin-token-0123456789", "bench-pepper-0123456789abcdef"])


def _call() -> Any:
    from gateway_core.providers.base import UpstreamCall
    from http_facade.convert_request import to_chat_request

    request = to_chat_request(orjson.loads(BODY), REQUEST_ID).request
    return UpstreamCall(request, "bench-model", "bench-model", REQUEST_ID, 30.0)


def attempt_line() -> Callable[[], Any]:
    """The upstream_attempt line and its count (chat/attempts.py), as after the answer."""
    from gateway_core.chat import attempts

    _logging()
    return lambda: attempts._write_attempt(dict(ATTEMPT))


def access_line() -> Callable[[], Any]:
    """The access line's JSON (as RequestRecord._write writes it), without the metrics."""
    from gateway_core.observability import json_lines

    _logging()
    log = logging.getLogger("tollgate.access")
    return lambda: json_lines.info_line(log, "chat request", ACCESS)


def attempt_format() -> Callable[[], Any]:
    """Only the formatting of the upstream_attempt line (message, fields, redaction)."""
    from gateway_core.chat.attempts import _ATTEMPT_MESSAGE
    from gateway_core.observability import redaction
    from gateway_core.observability.log_format import JsonFormatter

    _logging()
    formatter = JsonFormatter(redaction.install())
    return lambda: formatter.format_info(time.time(), "tollgate.routing", _ATTEMPT_MESSAGE % ATTEMPT,
                                         {"upstream_attempt": ATTEMPT})


def check_bounds() -> Callable[[], Any]:
    from http_facade.bounds import check_bounds as check
    from http_facade.edge_limits import EdgeLimits

    payload, limits = orjson.loads(BODY), EdgeLimits()
    return lambda: check(payload, limits, BODY)


def to_chat_request() -> Callable[[], Any]:
    from http_facade.convert_request import to_chat_request as convert

    return lambda: convert(orjson.loads(BODY), REQUEST_ID)


def validate_request() -> Callable[[], Any]:
    from gateway_core.chat.validate import validate_request as validate

    request = _call().request
    return lambda: validate(request)


def estimate_prompt_tokens() -> Callable[[], Any]:
    from gateway_core.tokens import estimate_prompt_tokens as estimate

    request = _call().request
    return lambda: estimate(request)


def prepare_request() -> Callable[[], Any]:
    from gateway_core.providers.openai.request import prepare_request as prepare

    call = _call()
    return lambda: orjson.dumps(prepare(call, stream=False).body)


def request_head() -> Callable[[], Any]:
    """The upstream request's headers and head bytes (providers/http.py, http_client.py)."""
    from gateway_core.providers.http import request_headers
    from gateway_core.providers.http_client import _request_head

    call = _call()
    auth = {"authorization": "Bearer sk-upstream-bench"}
    start = "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8000\r\n"

    def run() -> bytes:
        headers = request_headers(call, stream=False, user_agent="tollgate/0.1", auth=auth)
        return _request_head(start, headers, 120)

    return run


def completion_json() -> Callable[[], Any]:
    from gateway_core.providers.openai.response import from_response
    from http_facade.convert_response import completion_json as to_json

    response = from_response(orjson.loads(COMPLETION), _call(), provider="upstream")
    return lambda: to_json(response)


CASES: dict[str, Case] = {
    name: globals()[name]
    for name in ("attempt_line", "attempt_format", "access_line", "check_bounds", "to_chat_request",
                 "validate_request", "estimate_prompt_tokens", "prepare_request", "request_head",
                 "completion_json")
}
