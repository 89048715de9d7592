"""A fake Anthropic Messages upstream: a real HTTP/1.1 server on 127.0.0.1, scripted by model id.

    with FakeAnthropicUpstream(expected_key="sk-ant-...") as up:   # or `async with`
        provider_base_url = up.base_url                             # "http://127.0.0.1:PORT" (no /v1)
        ...
        up.last_request.body["system"]                              # what the gateway sent
        up.disconnects                                              # responses the client closed early

It runs (on http_server.FakeUpstream) in its own thread and event loop (asyncio + h11, so it can drop a
connection mid-body the way a crashing upstream does), serves POST
/v1/messages in Anthropic's exact wire format (named SSE events, ping, text,
thinking and tool_use blocks with input_json_delta fragments, cumulative
message_delta usage, no [DONE]), and records every request. It checks the
x-api-key and anthropic-version headers and rejects bodies the real API would
(a system role in messages, empty text blocks, temperature with top_p,
thinking with a forced tool, orphan tool_results, ...) with a 400. Usage is
computed from each request, never a constant. The upstream model id picks the
script (unknown ids act as "claude-text"); a tool_choice of type tool or any
answers with that forced call, as the real API does:

    claude-text             the configured reply (`reply=`), streamed word by word
    claude-echo             the last user message's text
    claude-tools            a text block, then two tool_use blocks (blocks 1 and 2; names from the
                            request's tools, input streamed in fragments); text after tool results
    claude-tool-noargs      one tool_use block and no input fragments at all
    claude-thinking         a thinking block (thinking_delta, signature_delta), then text
    claude-cached           text; usage with cache reads and writes, repeated in message_delta
    claude-max-tokens       three words, then stop_reason max_tokens (any reply stops at max_tokens)
    claude-refusal          an empty text block and stop_reason refusal
    claude-midstream-error  some text, then `event: error` (overloaded_error)
    claude-slow             one event every `slow_interval` seconds, `slow_chunks` words
    claude-hang             sends nothing until the client goes away (or `hang_seconds`)
    claude-reset            a few events (or half a JSON body), then the connection drops
    claude-malformed        an event whose data is not JSON
    claude-error-NNN        HTTP NNN with Anthropic's error body; 401 echoes the key it was given,
                            429 carries Retry-After, 529 is overloaded_error

Token accounting: input_tokens grows with the request's size; every text or
thinking piece and every non-empty input fragment is one output token, plus
one per block. `usage_sent[x-request-id]` is the usage each answer reported.
"""

from __future__ import annotations

from typing import Any

from tests.fakes import anthropic_scripts
from tests.fakes.http_server import FakeUpstream, RecordedRequest, Wire
from tests.fakes.plans import Plan, SseFraming

__all__ = ["DEFAULT_REPLY", "FakeAnthropicUpstream", "RecordedRequest"]

DEFAULT_REPLY = "Hello from the fake Claude! This reply arrives word by word."


class FakeAnthropicUpstream(FakeUpstream):
    """A scripted Anthropic Messages server in a background thread. Start with `with` or start()."""

    # Named events, and no [DONE]: a stream ends with message_stop.
    wire = Wire(SseFraming(named=True), request_id_header="request-id")
    base_path = ""  # requests go to {base_url}/v1/messages
    default_reply = DEFAULT_REPLY
    thread_name = "fake-anthropic-upstream"

    def plan_for(self, method: str, target: str, headers: dict[str, str], body: Any) -> Plan:
        return anthropic_scripts.plan_for(self, method, target, headers, body)
