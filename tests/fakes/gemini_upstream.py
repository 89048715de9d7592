"""A fake Gemini API: a real HTTP/1.1 server on 127.0.0.1, scripted by the model id in the URL path.

    with FakeGeminiUpstream(expected_key="AIza...") as up:   # or `async with`
        provider_base_url = up.base_url                       # "http://127.0.0.1:PORT/v1beta"
        ...
        up.requests[-1].body["contents"]                      # what the gateway sent
        up.disconnects                                        # responses the client closed early

It runs (on http_server.FakeUpstream) in its own thread and event loop (asyncio + h11, so it can drop a
connection mid-body the way a crashing upstream does), speaks Gemini's exact
wire format (POST /v1beta/models/{model}:generateContent, and
:streamGenerateContent?alt=sse with `data: {...}\\r\\n\\r\\n` events, usageMetadata
repeated on each, and no [DONE]), requires the x-goog-api-key header (a missing
key is Google's 403, a wrong one its 400 API_KEY_INVALID; a `?key=` query
parameter is refused outright) and records every request. Usage is computed
from each request and kept by the gateway's x-request-id (`usage_sent`).
Scripts (unknown model ids act as "gemini-text"):

    gemini-text            the configured reply (`reply=`), 3 words an event; honours candidateCount,
                           maxOutputTokens (MAX_TOKENS) and responseMimeType application/json
                           (a JSON value fitting responseJsonSchema)
    gemini-tools           two parallel functionCalls, the first with a thoughtSignature; once the last
                           content holds functionResponses, plain text, but only if every step of the
                           current turn echoes its signature (else Gemini 3's 400)
    gemini-thinking        thoughtsTokenCount and cachedContentTokenCount; thought parts when
                           thinkingConfig.includeThoughts is on
    gemini-max-tokens      three words, then finishReason MAX_TOKENS
    gemini-safety          the prompt is blocked: promptFeedback.blockReason SAFETY, no candidates
    gemini-slow            one event every `slow_interval` seconds, `slow_chunks` of them
    gemini-hang            sends nothing until the client goes away (or `hang_seconds`)
    gemini-reset           two events (or half a JSON body), then the connection drops
    gemini-midstream-error two events, then `data: {"error": {...503...}}`
    gemini-error-NNN       HTTP NNN with Google's error body: 400 INVALID_ARGUMENT (quoting a URL), 403
                           quoting the key it was given, 404, 429 with a RetryInfo of 7s, 500, 503, 504
"""

from __future__ import annotations

from typing import Any

from tests.fakes import gemini_scripts
from tests.fakes.http_server import FakeUpstream, RecordedRequest, Wire
from tests.fakes.plans import Plan, SseFraming

__all__ = ["DEFAULT_REPLY", "FakeGeminiUpstream", "RecordedRequest"]

DEFAULT_REPLY = "Hello from the fake Gemini! This reply arrives a few words at a time."


class FakeGeminiUpstream(FakeUpstream):
    """A scripted Gemini API server in a background thread. Start with `with` or start()."""

    wire = Wire(
        SseFraming(separator="\r\n\r\n"),
        request_id_header="x-goog-request-id",
        request_id_prefix="fake",
        json_content_type="application/json; charset=UTF-8",
        json_indent=2,  # Google pretty-prints whole answers
        fixed_headers=(("server", "scaffolding on HTTPServer2"),),
    )
    base_path = "/v1beta"
    default_reply = DEFAULT_REPLY
    thread_name = "fake-gemini-upstream"

    def __init__(self, expected_key: str | None = None, **knobs: Any) -> None:
        super().__init__(expected_key, **knobs)
        # Every thoughtSignature handed out; only these are accepted back.
        self.signatures: set[str] = set()

    def plan_for(self, method: str, target: str, headers: dict[str, str], body: Any) -> Plan:
        return gemini_scripts.plan_for(self, method, target, headers, body)
