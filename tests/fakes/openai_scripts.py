"""What the fake OpenAI upstream answers, per model id: response plans in OpenAI's wire format.

Pure data: the server (http_server.py, configured in openai_upstream.py) only plays
these plans. See openai_upstream.py's docstring for the list of scripted model ids.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any, Protocol

from tests.fakes import plans
from tests.fakes.plans import DEFAULT_TOOL_NAMES, RESET_REPLY, TOOL_VALUES, JsonPlan, Plan, StreamPlan

FINGERPRINT = "fp_fake0001"
TOOL_REPLY = "Thanks, the tools answered."
REASONING = "Let me think this through carefully, one step at a time."
REASONED_REPLY = "Here is my considered answer."


class Settings(plans.Settings, Protocol):
    """The knobs of a FakeOpenAIUpstream that scripts read."""

    vendor: str
    redirect_to: str


def plan_for(up: Settings, method: str, path: str, headers: dict[str, str], body: Any) -> Plan:
    """The response to one request."""
    if method == "GET" and path.rstrip("/") == "/v1/models":
        models = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"} for m in SCRIPTED]
        return JsonPlan(200, {"object": "list", "data": models})
    if method != "POST" or path != "/v1/chat/completions":
        return error(404, f"Invalid URL ({method} {path})", param=None, code=None)
    if up.expected_key is not None and headers.get("authorization") != f"Bearer {up.expected_key}":
        return auth_error(headers)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("model"):
        return error(400, "We could not parse the JSON body of your request.", param=None, code=None)
    if "stream_options" in body and not body.get("stream"):
        return error(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                     param="stream_options", code="invalid_value")
    refusal = vendor_refusal(up.vendor, body)
    if refusal is not None:
        return refusal
    model = str(body["model"])
    if model.startswith("fake-error-") and model[-3:].isdigit():
        return status_error(int(model[-3:]), headers, model)
    if model.startswith("fake-flat-error-") and model[-3:].isdigit():
        return flat_error(int(model[-3:]))
    if model == "fake-redirect":
        return JsonPlan(307, {}, headers={"location": up.redirect_to})
    return _Turn(up, body, headers.get("x-request-id", "")).plan()


SCRIPTED = ("fake-text", "fake-echo", "fake-tools", "fake-reasoning", "fake-no-usage", "fake-slow", "fake-hang",
            "fake-reset", "fake-midstream-error", "fake-malformed", "fake-redirect")

# What Mistral's request schema admits (docs.mistral.ai/api); it refuses anything else with a 422.
MISTRAL_FIELDS = frozenset({
    "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed", "response_format",
    "tools", "tool_choice", "presence_penalty", "frequency_penalty", "n", "prediction", "parallel_tool_calls",
    "safe_prompt",
})
MISTRAL_MESSAGE_FIELDS = {
    "system": {"role", "content"}, "user": {"role", "content"},
    "assistant": {"role", "content", "tool_calls", "prefix"}, "tool": {"role", "content", "tool_call_id", "name"},
}
MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")
GROQ_REFUSED = ("logprobs", "logit_bias", "top_logprobs")


def vendor_refusal(vendor: str, body: dict[str, Any]) -> JsonPlan | None:
    """The error a strict vendor answers this body with, or None when it takes it."""
    if vendor == "mistral":
        return _mistral_refusal(body)
    if vendor == "groq":
        return _groq_refusal(body)
    return None


def _mistral_refusal(body: dict[str, Any]) -> JsonPlan | None:
    extra: list[list[Any]] = [["body", key] for key in body if key not in MISTRAL_FIELDS]
    for i, message in enumerate(body["messages"]):
        role = message.get("role")
        allowed = MISTRAL_MESSAGE_FIELDS.get(role)
        if allowed is None:
            extra.append(["body", "messages", i, "role"])
            continue
        extra += [["body", "messages", i, role, key] for key in message if key not in allowed]
    if extra:
        problems = [{"type": "extra_forbidden", "loc": loc, "msg": "Extra inputs are not permitted", "input": None}
                    for loc in extra]
        return JsonPlan(422, {"object": "error", "message": {"detail": problems}, "type": "invalid_request_error",
                              "param": None, "code": None})
    ids = [c.get("id") for m in body["messages"] for c in m.get("tool_calls") or []]
    ids += [m["tool_call_id"] for m in body["messages"] if "tool_call_id" in m]
    for call_id in ids:
        if not isinstance(call_id, str) or not MISTRAL_ID.fullmatch(call_id):
            return JsonPlan(400, {"object": "error", "message": f"Tool call id was {call_id} but must be a-z, A-Z, "
                                  "0-9, with a length of 9.", "type": "invalid_request_error", "param": None,
                                  "code": "3280"})
    return None


def _groq_refusal(body: dict[str, Any]) -> JsonPlan | None:
    for name in GROQ_REFUSED:
        if name in body:
            return error(400, f"'{name}' : property '{name}' is unsupported", param=name, code=None)
    if body.get("n", 1) != 1:
        return error(400, "'n' : number must be at most 1", param="n", code=None)
    if any("name" in m for m in body["messages"]):
        return error(400, "'messages.0' : for 'role:user' the following must be satisfied[('messages.0.name' : "
                     "property 'name' is unsupported)]", param=None, code=None)
    return None


def flat_error(status: int) -> JsonPlan:
    """Mistral's flat error body (a 422 carries pydantic's validation report as its message)."""
    if status == 422:
        problems = [{"type": "extra_forbidden", "loc": ["body", "logprobs"], "msg": "Extra inputs are not permitted",
                     "input": True, "url": "https://errors.pydantic.dev/2.10/v/extra_forbidden"}]
        message: Any = {"detail": problems}
    else:
        message = f"Scripted flat error {status}; see https://docs.mistral.ai/ for details."
    return JsonPlan(status, {"object": "error", "message": message, "type": "invalid_request_error", "param": None,
                             "code": "3051"})


def error(status: int, message: str, *, param: str | None, code: str | None,
          kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> JsonPlan:
    """An OpenAI error response."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JsonPlan(status, body, headers=headers or {})


def auth_error(headers: dict[str, str]) -> JsonPlan:
    """OpenAI's 401, which (like the real one) echoes the key it was given."""
    given = headers.get("authorization", "").removeprefix("Bearer ")
    if not given:
        return error(401, "You didn't provide an API key.", param=None, code=None)
    return error(401, f"Incorrect API key provided: {given}. You can find your API key at "
                 "https://platform.openai.com/account/api-keys.", param=None, code="invalid_api_key")


def status_error(status: int, headers: dict[str, str], model: str) -> JsonPlan:
    """The scripted fake-error-NNN response."""
    if status == 200:  # an error body with a success status, as some vendors send
        return error(200, "The model is overloaded.", param=None, code=None, kind="server_error")
    if status == 401:
        return auth_error(headers)
    if status == 400:
        return error(400, "Invalid value for 'temperature': expected a decimal between 0 and 2. "
                     "See https://platform.openai.com/docs/api-reference.", param="temperature", code="invalid_value")
    if status == 404:
        return error(404, f"The model `{model}` does not exist or you do not have access to it.",
                     param=None, code="model_not_found")
    if status == 429:
        return error(429, f"Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
                     "Limit 3, Used 3, Requested 1.", param=None, code="rate_limit_exceeded", kind="requests",
                     headers={"retry-after": "2"})
    if status == 503:
        return error(503, "The engine is currently overloaded, please try again later.", param=None, code=None,
                     kind="server_error", headers={"retry-after": "1"})
    if status >= 500:
        return error(status, "The server had an error while processing your request. Sorry about that!",
                     param=None, code=None, kind="server_error")
    return error(status, f"Scripted error {status}.", param=None, code=None)


class _Turn:
    """One chat completion: what each choice says, and how it is sent."""

    def __init__(self, up: Settings, body: dict[str, Any], request_id: str = "") -> None:
        self.up, self.body, self.request_id = up, body, request_id
        self.model = str(body["model"])
        self.number = len(up.requests)
        self.id = f"chatcmpl-fake{self.number:06d}"
        self.created = int(time.time())
        self.choices = max(int(body.get("n") or 1), 1)
        messages = body["messages"]
        self.after_tool = bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"
        self.tools = self.model == "fake-tools" and not self.after_tool
        self.reasoning = plans.words(REASONING) if self.model == "fake-reasoning" else []
        self.content, self.finish = self._content()
        self.calls = self._tool_calls() if self.tools else []

    def plan(self) -> Plan:
        mode = plans.mode_of(self.model, "fake-")
        if not self.body.get("stream"):
            return plans.json_plan(self.up, mode, self._completion())
        if mode == "midstream-error":
            failure = {"error": {"message": "The server had an error while processing your request.",
                                 "type": "server_error", "param": None, "code": None}}
            return StreamPlan([*list(self._events())[:2], failure])
        if mode == "malformed":
            return StreamPlan([next(iter(self._events())), "{not json"])
        return plans.stream_plan(self.up, mode, self._slow_events() if mode == "slow" else self._events(),
                                 reset_after=3)

    def _content(self) -> tuple[list[str], str]:
        if self.tools:
            return [], "tool_calls"
        if self.after_tool:
            text = TOOL_REPLY
        elif self.model == "fake-echo":
            text = plans.last_user_text(self.body["messages"])
        elif self.model == "fake-reasoning":
            text = REASONED_REPLY
        elif self.model in ("fake-reset", "fake-midstream-error"):
            text = RESET_REPLY
        else:
            text = self.up.reply
        pieces = plans.words(text)
        limit = self.body.get("max_completion_tokens") or self.body.get("max_tokens")
        if isinstance(limit, int) and len(pieces) > limit:
            return pieces[:limit], "length"
        return pieces, "stop"

    def _tool_calls(self) -> list[tuple[str, str, list[str]]]:
        schemas = [t["function"] for t in self.body.get("tools") or [] if t.get("type") == "function"]
        if not schemas:
            schemas = [{"name": name} for name in DEFAULT_TOOL_NAMES]
        calls = []
        for k in range(2):
            schema = schemas[min(k, len(schemas) - 1)]
            arguments = json.dumps(_arguments(schema.get("parameters"), k), separators=(",", ":"))
            pieces = [arguments[i : i + 6] for i in range(0, len(arguments), 6)]
            call_id = f"fk{self.number:05d}c{k}" if self.up.vendor == "mistral" else f"call_fake{self.number:04d}x{k}"
            calls.append((call_id, schema["name"], pieces))
        return calls

    def _usage(self) -> dict[str, Any] | None:
        usage = self._compute_usage()
        if usage is not None and self.request_id:
            self.up.usage_sent[self.request_id] = usage  # ground truth, keyed by the gateway's request id
        return usage

    def _compute_usage(self) -> dict[str, Any] | None:
        if self.model == "fake-no-usage":
            return None
        if self.model == "fake-slow":
            prompt = max(len(json.dumps(self.body["messages"])), 4) // 4
            return {"prompt_tokens": prompt, "completion_tokens": self.up.slow_chunks,
                    "total_tokens": prompt + self.up.slow_chunks}
        prompt = max(len(json.dumps(self.body["messages"])) + len(json.dumps(self.body.get("tools") or [])), 4) // 4
        per_choice = len(self.content) + len(self.reasoning) + sum(len(pieces) + 1 for _, _, pieces in self.calls)
        completion = per_choice * self.choices
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion}
        if self.model == "fake-reasoning":  # DeepSeek's shape
            usage.update(prompt_cache_hit_tokens=prompt // 2, prompt_cache_miss_tokens=prompt - prompt // 2,
                         completion_tokens_details={"reasoning_tokens": len(self.reasoning) * self.choices})
            return usage
        usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        return usage

    def _message(self) -> dict[str, Any]:
        content = "".join(self.content) if not self.tools else None
        if self.reasoning:
            return {"role": "assistant", "content": content, "reasoning_content": "".join(self.reasoning)}
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
        if self.calls:
            message["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": "".join(p)}}
                                     for i, n, p in self.calls]
        return message

    def _completion(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": i, "message": self._message(), "logprobs": None, "finish_reason": self.finish}
                        for i in range(self.choices)],
            "service_tier": "default", "system_fingerprint": FINGERPRINT,
        }
        if (usage := self._usage()) is not None:
            body["usage"] = usage
        return body

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "service_tier": "default", "system_fingerprint": FINGERPRINT, "choices": choices}
        if self._include_usage() and self.up.vendor != "mistral":
            chunk["usage"] = None
        return chunk

    def _include_usage(self) -> bool:
        if self.up.vendor == "mistral":  # always sends usage, and refuses stream_options
            return True
        options = self.body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    def _delta(self, index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return self._chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}])

    def _events(self) -> Iterator[dict[str, Any]]:
        if self.up.vendor == "mistral":  # usage rides on the last chunk, unasked
            events = [event for index in range(self.choices) for event in self._choice_events(index)]
            usage = self._usage()
            yield from events[:-1]
            yield {**events[-1], "usage": usage} if usage is not None else events[-1]
            return
        for index in range(self.choices):
            yield from self._choice_events(index)
        usage = self._usage()
        if usage is not None and self._include_usage():
            yield {**self._chunk([]), "usage": usage}

    def _choice_events(self, index: int) -> Iterator[dict[str, Any]]:
        if self.calls:
            for k, (call_id, name, pieces) in enumerate(self.calls):
                first = {"index": k, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
                head = {"role": "assistant", "content": None, "refusal": None} if k == 0 else {}
                yield self._delta(index, {**head, "tool_calls": [first]})
                for piece in pieces:
                    yield self._delta(index, {"tool_calls": [{"index": k, "function": {"arguments": piece}}]})
        elif self.reasoning:
            yield self._delta(index, {"role": "assistant", "content": None, "reasoning_content": ""})
            for piece in self.reasoning:
                yield self._delta(index, {"content": None, "reasoning_content": piece})
            for piece in self.content:
                yield self._delta(index, {"content": piece, "reasoning_content": None})
        else:
            yield self._delta(index, {"role": "assistant", "content": "", "refusal": None})
            for piece in self.content:
                yield self._delta(index, {"content": piece})
        yield self._delta(index, {}, self.finish)

    def _slow_events(self) -> Iterator[dict[str, Any]]:
        yield self._delta(0, {"role": "assistant", "content": "", "refusal": None})
        for tick in range(self.up.slow_chunks):
            yield self._delta(0, {"content": f" tick{tick}"})
        yield self._delta(0, {}, "stop")
        usage = self._usage()
        if usage is not None and self._include_usage():
            yield {**self._chunk([]), "usage": usage}


def _arguments(parameters: Any, k: int) -> dict[str, Any]:
    """Arguments for the k-th call: each required property gets a value of its type."""
    if not isinstance(parameters, dict) or not parameters.get("required"):
        return {"city": TOOL_VALUES[k]}
    properties = parameters.get("properties") or {}
    values = {"integer": k + 1, "number": k + 1.5, "boolean": True, "array": [], "object": {}}
    return {name: values.get(str((properties.get(name) or {}).get("type")), TOOL_VALUES[k])
            for name in parameters["required"]}
