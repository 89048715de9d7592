"""A fake OpenAI-compatible upstream: a real HTTP/1.1 server on 127.0.0.1, scripted by model id.

    with FakeOpenAIUpstream(expected_key="sk-op") as up:   # or `async with`
        provider_base_url = up.base_url                     # "http://127.0.0.1:PORT/v1"
        ...
        up.requests[-1].body["stream_options"]               # what the gateway sent
        up.disconnects                                       # responses the client closed early

It runs (on http_server.FakeUpstream) in its own thread and event loop (asyncio + h11, so it can drop a
connection mid-body the way a crashing upstream does), serves
POST /v1/chat/completions and GET /v1/models in OpenAI's exact wire format,
and records every request. Usage is computed from each request, never a
constant. The upstream model id picks the script (unknown ids act as
"fake-text"):

    fake-text            the configured reply (`reply=`), streamed word by word
    fake-echo            the last user message's text
    fake-tools           two parallel tool calls (names from the request's tools), arguments
                         streamed in fragments; plain text once the last message is a tool result
    fake-reasoning       DeepSeek style: reasoning_content in message/deltas, prompt_cache_hit_tokens
    fake-no-usage        text, never any usage
    fake-slow            one chunk every `slow_interval` seconds, `slow_chunks` of them
    fake-hang            sends nothing until the client goes away (or `hang_seconds`)
    fake-reset           a few chunks (or half a JSON body), then the connection drops
    fake-midstream-error two chunks, then `data: {"error": {...}}` and [DONE] (as vLLM does)
    fake-malformed       a stream event whose data is not JSON
    fake-redirect        307 to `redirect_to` (a gateway must not follow it)
    fake-error-NNN       HTTP NNN with OpenAI's error body; 401 echoes the key it was given,
                         429 and 503 carry Retry-After; 200 is an error body with a success status
    fake-flat-error-NNN  HTTP NNN with Mistral's flat body ({"object": "error", "message": ...});
                         422 carries a pydantic validation report as the message

`vendor=` makes the fake as strict as that vendor before any script runs:
"mistral" answers fields outside Mistral's schema with a 422 extra_forbidden
report, tool-call ids other than 9 alphanumerics with a 400, hands out 9-char
ids itself and always ends a stream with usage on its last chunk; "groq"
answers logprobs, logit_bias, top_logprobs, n != 1 and messages[].name with a
400. The default, "openai", takes everything.

Stream token accounting: every content/reasoning delta and every argument
fragment is one completion token; prompt_tokens grows with the request's size.
"""

from __future__ import annotations

from typing import Any

from tests.fakes import openai_scripts
from tests.fakes.http_server import FakeUpstream, RecordedRequest, Wire
from tests.fakes.plans import Plan, SseFraming

__all__ = ["DEFAULT_REPLY", "FakeOpenAIUpstream", "RecordedRequest"]

DEFAULT_REPLY = "Hello from the fake upstream! This reply arrives word by word."


class FakeOpenAIUpstream(FakeUpstream):
    """A scripted OpenAI-compatible server in a background thread. Start with `with` or start()."""

    wire = Wire(SseFraming(done="[DONE]"), request_id_header="x-request-id")
    base_path = "/v1"
    default_reply = DEFAULT_REPLY
    thread_name = "fake-openai-upstream"

    def __init__(
        self,
        expected_key: str | None = None,
        *,
        vendor: str = "openai",
        redirect_to: str = "http://127.0.0.1:9/v1/chat/completions",
        **knobs: Any,  # reply, slow_interval, slow_chunks, hang_seconds: see FakeUpstream
    ) -> None:
        super().__init__(expected_key, **knobs)
        self.vendor = vendor
        self.redirect_to = redirect_to

    def plan_for(self, method: str, target: str, headers: dict[str, str], body: Any) -> Plan:
        return openai_scripts.plan_for(self, method, target, headers, body)
