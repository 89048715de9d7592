"""What the fake Gemini upstream answers, per model id: response plans in Gemini's wire format.

Pure data: the server (http_server.py, configured in gemini_upstream.py) only plays
these plans. See gemini_upstream.py's docstring for the list of scripted model ids.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any, Protocol

from tests.fakes import plans
from tests.fakes.plans import DEFAULT_TOOL_NAMES, RESET_REPLY, TOOL_VALUES, JsonPlan, Plan, StreamPlan

TOOL_REPLY = "Thanks, both tools answered."
THOUGHT = "The user wants a considered answer, so weigh it first."
THOUGHTS_TOKENS = 24
WORDS_PER_EVENT = 3
MISSING_SIGNATURE = (
    "Function call is missing a thought_signature in functionCall parts. This is required for tools to work "
    "correctly, and missing thought_signature may lead to degraded model performance. Additional data, function "
    "call `default_api:{name}` , position {position}. Please refer to "
    "https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
)


class Settings(plans.Settings, Protocol):
    """The knobs and records of a FakeGeminiUpstream that scripts read and write."""

    signatures: set[str]


def plan_for(up: Settings, method: str, target: str, headers: dict[str, str], body: Any) -> Plan:
    """The response to one request."""
    path, _, query = target.partition("?")
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    collection, _, resource = path.removeprefix("/v1beta/").partition("/")
    model, _, action = resource.partition(":")
    if method != "POST" or collection not in ("models", "tunedModels") or "/" in model or action not in ACTIONS:
        return error(404, f"Method not found: {method} {path}", "NOT_FOUND")
    if "key" in params:
        return error(400, "This fake insists on the x-goog-api-key header: the key was sent in the URL.",
                     "INVALID_ARGUMENT")
    if up.expected_key is not None and (failure := auth_failure(up.expected_key, headers)) is not None:
        return failure
    if action == "streamGenerateContent" and params.get("alt") != "sse":
        return error(400, "This fake only scripts alt=sse streams.", "INVALID_ARGUMENT")
    if not isinstance(body, dict) or not isinstance(body.get("contents"), list) or not body["contents"]:
        return error(400, "* GenerateContentRequest.contents: contents is not specified\n", "INVALID_ARGUMENT")
    if model.startswith("gemini-error-") and model[-3:].isdigit():
        return status_error(int(model[-3:]), headers, model)
    turn = _Turn(up, model, body, headers.get("x-request-id", ""))
    if (rejection := turn.rejection()) is not None:
        return rejection
    return turn.stream_plan() if action == "streamGenerateContent" else turn.json_plan()


ACTIONS = ("generateContent", "streamGenerateContent")
SCRIPTED = ("gemini-text", "gemini-tools", "gemini-thinking", "gemini-max-tokens", "gemini-safety", "gemini-slow",
            "gemini-hang", "gemini-reset", "gemini-midstream-error")


def error(status: int, message: str, rpc_status: str, details: list[dict[str, Any]] | None = None,
          headers: dict[str, str] | None = None) -> JsonPlan:
    """A Gemini error response: google.rpc.Status as JSON."""
    body: dict[str, Any] = {"error": {"code": status, "message": message, "status": rpc_status}}
    if details:
        body["error"]["details"] = details
    return JsonPlan(status, body, headers=headers or {})


def auth_failure(expected_key: str, headers: dict[str, str]) -> JsonPlan | None:
    """Google's answers to a missing key (403) and a wrong one (400 API_KEY_INVALID), or None."""
    given = headers.get("x-goog-api-key")
    if not given:
        return error(403, "Method doesn't allow unregistered callers (callers without established identity). "
                     "Please use API Key or other form of API consumer identity to call this API.", "PERMISSION_DENIED")
    if given != expected_key:
        return error(400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT", [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
             "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
             "message": "API key not valid. Please pass a valid API key."},
        ])
    return None


def status_error(status: int, headers: dict[str, str], model: str) -> JsonPlan:
    """The scripted gemini-error-NNN response."""
    if status == 400:
        return error(400, "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), \"hot\". "
                     "See https://ai.google.dev/gemini-api/docs for details.", "INVALID_ARGUMENT")
    if status == 403:  # Google quotes the key it was given in some 403s
        key = headers.get("x-goog-api-key", "")
        return error(403, f"Permission denied: Consumer 'api_key:{key}' has been suspended.", "PERMISSION_DENIED", [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "CONSUMER_SUSPENDED",
             "domain": "googleapis.com", "metadata": {"consumer": f"projects/api_key:{key}"}},
        ])
    if status == 404:
        return error(404, f"models/{model} is not found for API version v1beta, or is not supported for "
                     "generateContent. Call ListModels to see the list of available models.", "NOT_FOUND")
    if status == 429:
        return error(429, "You exceeded your current quota, please check your plan and billing details. "
                     "Please retry in 7.12s.", "RESOURCE_EXHAUSTED", [
                         {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                             {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                              "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                              "quotaDimensions": {"location": "global", "model": model}, "quotaValue": "10"}]},
                         {"@type": "type.googleapis.com/google.rpc.Help", "links": [
                             {"description": "Learn more about Gemini API quotas",
                              "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
                         {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"},
                     ])
    if status == 503:
        return error(503, "The model is overloaded. Please try again later.", "UNAVAILABLE")
    if status == 504:
        return error(504, "Deadline expired before operation could complete.", "DEADLINE_EXCEEDED")
    if status == 500:
        return error(500, "An internal error has occurred. Please retry or report in "
                     "https://developers.generativeai.google/guide/troubleshooting", "INTERNAL")
    return error(status, f"Scripted error {status}.", "UNKNOWN")


def signature_for(number: int) -> str:
    """The thought signature of the request numbered `number`, as Gemini's base64 text."""
    return base64.b64encode(f"fake-thought-signature/{number:06d}/".encode() + bytes(range(200, 216))).decode()


class _Turn:
    """One generateContent call: what each candidate says, and how it is sent."""

    def __init__(self, up: Settings, model: str, body: dict[str, Any], request_id: str) -> None:
        self.up, self.model, self.body, self.request_id = up, model, body, request_id
        self.mode = plans.mode_of(model, "gemini-")
        self.number = len(up.requests) - 1  # counted from 0: the server has recorded this request already
        self.config = body.get("generationConfig") or {}
        self.candidates = max(int(self.config.get("candidateCount") or 1), 1)
        last = body["contents"][-1]
        self.after_tool = any("functionResponse" in p for p in last.get("parts", []))
        self.calls = self._calls() if model == "gemini-tools" and not self.after_tool else []
        thinking = model == "gemini-thinking"
        include = bool((self.config.get("thinkingConfig") or {}).get("includeThoughts"))
        self.thought = THOUGHT if thinking and include else ""
        self.thoughts_tokens = THOUGHTS_TOKENS if thinking else 0
        self.words, self.finish = self._words()

    def rejection(self) -> JsonPlan | None:
        """Gemini 3's check: the first functionCall of each step of the current turn carries its signature."""
        contents = self.body["contents"]
        starts = [i for i, c in enumerate(contents)
                  if c.get("role") == "user" and any("text" in p for p in c.get("parts", []))]
        first = starts[-1] + 1 if starts else 0
        for position, content in enumerate(contents[first:], start=first + 1):
            calls = [p for p in content.get("parts", []) if "functionCall" in p]
            if content.get("role") != "model" or not calls:
                continue
            signature = calls[0].get("thoughtSignature")
            if signature is None:
                message = MISSING_SIGNATURE.format(name=calls[0]["functionCall"].get("name"), position=position)
                return error(400, message, "INVALID_ARGUMENT")
            if signature not in self.up.signatures:
                return error(400, "Corrupted thought signature.", "INVALID_ARGUMENT")
        return None

    def json_plan(self) -> JsonPlan:
        if self.mode == "safety":
            return JsonPlan(200, self._blocked())
        body = {"candidates": [self._candidate(i, self._all_parts(), self.finish) for i in range(self.candidates)],
                "usageMetadata": self._usage(len(self.words)), "modelVersion": self.model,
                "responseId": self._response_id()}
        return plans.json_plan(self.up, self.mode, body)

    def stream_plan(self) -> StreamPlan:
        if self.mode == "safety":
            return StreamPlan([self._blocked()])
        events = list(self._slow_events() if self.mode == "slow" else self._events())
        if self.mode == "midstream-error":
            failure = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
            return StreamPlan([*events[:2], failure])
        return plans.stream_plan(self.up, self.mode, events, reset_after=2)

    def _words(self) -> tuple[list[str], str]:
        if self.calls:
            return [], "STOP"
        if self.after_tool:
            text = TOOL_REPLY
        elif self.config.get("responseMimeType") == "application/json":
            text = json.dumps(_example(self.config.get("responseJsonSchema")))
        elif self.model in ("gemini-reset", "gemini-midstream-error"):
            text = RESET_REPLY
        else:
            text = self.up.reply
        pieces = plans.words(text)
        limit = self.config.get("maxOutputTokens")
        if self.model == "gemini-max-tokens":
            limit = min(limit or 3, 3)
        if isinstance(limit, int) and len(pieces) > limit:
            return pieces[:limit], "MAX_TOKENS"
        return pieces, "STOP"

    def _calls(self) -> list[dict[str, Any]]:
        declarations = [d for tool in self.body.get("tools") or [] for d in tool.get("functionDeclarations") or []]
        names = [d["name"] for d in declarations] or list(DEFAULT_TOOL_NAMES)
        signature = signature_for(self.number)
        self.up.signatures.add(signature)
        parts = []
        for k in range(2):  # parallel calls: only the first carries the step's signature
            part: dict[str, Any] = {"functionCall": {"name": names[min(k, len(names) - 1)],
                                                     "args": {"city": TOOL_VALUES[k]}}}
            if k == 0:
                part["thoughtSignature"] = signature
            parts.append(part)
        return parts

    def _all_parts(self) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = [{"text": self.thought, "thought": True}] if self.thought else []
        if self.words:
            parts.append({"text": "".join(self.words)})
        return parts + self.calls

    def _candidate(self, index: int, parts: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finish is not None:
            candidate["finishReason"] = finish
        candidate["index"] = index
        return candidate

    def _event(self, parts: list[dict[str, Any]], finish: str | None, words_so_far: int) -> dict[str, Any]:
        return {"candidates": [self._candidate(i, parts, finish) for i in range(self.candidates)],
                "usageMetadata": self._usage(words_so_far, final=finish is not None),
                "modelVersion": self.model, "responseId": self._response_id()}

    def _events(self) -> Iterator[dict[str, Any]]:
        if self.thought:
            yield self._event([{"text": self.thought, "thought": True}], None, 0)
        if self.calls:
            yield self._event(self.calls[:1], None, 0)
            yield self._event(self.calls[1:], self.finish, 0)
            return
        groups = [self.words[i : i + WORDS_PER_EVENT] for i in range(0, len(self.words), WORDS_PER_EVENT)] or [[]]
        sent = 0
        for position, group in enumerate(groups):
            sent += len(group)
            finish = self.finish if position == len(groups) - 1 else None
            yield self._event([{"text": "".join(group)}], finish, sent)

    def _slow_events(self) -> Iterator[dict[str, Any]]:
        for tick in range(self.up.slow_chunks):
            finish = "STOP" if tick == self.up.slow_chunks - 1 else None
            yield self._event([{"text": f" tick{tick}"}], finish, tick + 1)

    def _blocked(self) -> dict[str, Any]:
        return {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
                "usageMetadata": self._usage(0), "modelVersion": self.model, "responseId": self._response_id()}

    def _response_id(self) -> str:
        return f"gfakeResp{self.number:06d}"

    def _usage(self, words: int, *, final: bool = True) -> dict[str, Any]:
        """usageMetadata as Gemini repeats it: prompt counts at once, output counts growing."""
        prompt = max(len(json.dumps([self.body["contents"], self.body.get("systemInstruction"),
                                     self.body.get("tools")])), 4) // 4
        calls = sum(1 + len(json.dumps(p["functionCall"])) // 4 for p in self.calls)
        candidates = (words + (calls if final else 0)) * self.candidates
        thoughts = self.thoughts_tokens * self.candidates
        usage: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
                                 "totalTokenCount": prompt + candidates + thoughts,
                                 "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        if self.model == "gemini-thinking":
            usage["cachedContentTokenCount"] = prompt // 2
        if not candidates:
            del usage["candidatesTokenCount"]  # proto3 JSON leaves zeros out
        if final and self.request_id:
            self.up.usage_sent[self.request_id] = usage  # ground truth, keyed by the gateway's request id
        return usage


def _example(schema: Any) -> Any:
    """A value that satisfies a simple JSON schema (objects, arrays, scalars)."""
    if not isinstance(schema, dict):
        return {"answer": "yes"}
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {name: _example(sub) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_example(schema.get("items"))]
    return {"integer": 7, "number": 21.5, "boolean": True, "null": None}.get(str(kind), "text")
