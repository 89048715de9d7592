"""A fake OpenAI upstream whose answers can be scripted per model id, one plan per request, for routing tests.

    up.script("flaky", plans.JsonPlan(500, ...), plans.JsonPlan(500, ...))  # the next two calls fail
    up.calls("flaky")                                                       # requests seen for that id

Once a model id's scripted plans are used up it answers as the plain fake
does (unknown ids answer like fake-text), so a route can fail and recover.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from tests.fakes import openai_scripts
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.fakes.plans import JsonPlan, Plan, StreamPlan


class ScriptedUpstream(FakeOpenAIUpstream):
    """FakeOpenAIUpstream plus per-model-id queues of plans."""

    def __init__(self, *args: Any, **knobs: Any) -> None:
        super().__init__(*args, **knobs)
        self._scripts: dict[str, list[Plan]] = {}
        self._lock = threading.Lock()

    def script(self, model: str, *plans: Plan) -> None:
        with self._lock:
            self._scripts.setdefault(model, []).extend(plans)

    def calls(self, model: str) -> int:
        """Chat requests this fake received for the upstream model id."""
        return sum(1 for r in list(self.requests) if isinstance(r.body, dict) and r.body.get("model") == model)

    def plan_for(self, method: str, target: str, headers: dict[str, str], body: Any) -> Plan:
        model = body.get("model") if isinstance(body, dict) else None
        with self._lock:
            queue = self._scripts.get(str(model))
            if queue:
                return queue.pop(0)
        return super().plan_for(method, target, headers, body)


def server_error(status: int = 500, retry_after: str | None = None) -> JsonPlan:
    """OpenAI's 5xx body, with Retry-After when given."""
    return openai_scripts.error(status, "The server had an error while processing your request. Sorry about that!",
                                param=None, code=None, kind="server_error",
                                headers={"retry-after": retry_after} if retry_after else None)


def rate_limited(retry_after: str) -> JsonPlan:
    """OpenAI's 429 for a request-rate limit, with Retry-After."""
    return openai_scripts.error(429, "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1.",
                                param=None, code="rate_limit_exceeded", kind="requests",
                                headers={"retry-after": retry_after})


def insufficient_quota() -> JsonPlan:
    """OpenAI's 429 when the (operator's) account is out of credit: no Retry-After, since waiting won't help."""
    return openai_scripts.error(
        429, "You exceeded your current quota, please check your plan and billing details. For more information on "
        "this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
        param=None, code="insufficient_quota", kind="insufficient_quota")


def reset_before_first_chunk() -> StreamPlan:
    """200 and SSE headers, then the connection drops before any event."""
    return StreamPlan([{"never": "sent"}], drop_after=0)


def refused_base_url() -> str:
    """An http base URL on a local port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
