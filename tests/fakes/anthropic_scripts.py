"""What the fake Anthropic upstream answers, per model id: plans in Anthropic's Messages wire format.

Pure data: the server (http_server.py, configured in anthropic_upstream.py) only plays
these plans. See anthropic_upstream.py's docstring for the list of scripted model ids.
Shapes follow the real API's streams as recorded in anthropic-sdk-python
tests/lib/streaming/fixtures (basic_response.txt, tool_use_response.txt, refusal_response.txt, ...).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tests.fakes import plans
from tests.fakes.plans import DEFAULT_TOOL_NAMES, RESET_REPLY, TOOL_VALUES, JsonPlan, Plan, Settings, StreamPlan

TOOL_PREAMBLE = "I'll look that up."
TOOL_REPLY = "Thanks, the tools answered."
THINKING = "The user greets me; a short friendly answer fits."
THINKING_REPLY = "Hello! Nice to meet you."
SIGNATURE = "EqQBCkgIARABGAIiQL0sig"


# A stream's events are named: (name, data), sent as `event: <name>` then `data: <json or raw text>`.
Event = tuple[str, dict[str, Any] | str]


def plan_for(up: Settings, method: str, path: str, headers: dict[str, str], body: Any) -> Plan:
    """The response to one request."""
    if method != "POST" or path != "/v1/messages":
        return error(404, "not_found_error", f"Not found: {method} {path}")
    if up.expected_key is not None and headers.get("x-api-key") != up.expected_key:
        return auth_error(headers)
    if not headers.get("anthropic-version"):
        return error(400, "invalid_request_error", "anthropic-version: header is required")
    problem = invalid_request_message(body)
    if problem is not None:
        return error(400, "invalid_request_error", problem)
    model = str(body["model"])
    if model.startswith("claude-error-") and model[-3:].isdigit():
        return status_error(int(model[-3:]), headers)
    return _Turn(up, body, headers.get("x-request-id", "")).plan()


SCRIPTED = ("claude-text", "claude-echo", "claude-tools", "claude-tool-noargs", "claude-thinking", "claude-cached",
            "claude-max-tokens", "claude-refusal", "claude-midstream-error", "claude-slow", "claude-hang",
            "claude-reset", "claude-malformed")


def error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JsonPlan:
    """An Anthropic error response."""
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake0001"}
    return JsonPlan(status, body, headers=headers or {})


def auth_error(headers: dict[str, str]) -> JsonPlan:
    """A 401 that (unlike the real one, to prove the gateway never leaks it) echoes the key it was given."""
    return error(401, "authentication_error", f"invalid x-api-key: {headers.get('x-api-key', '')}")


def status_error(status: int, headers: dict[str, str]) -> JsonPlan:
    """The scripted claude-error-NNN response."""
    if status == 401:
        return auth_error(headers)
    if status == 400:
        return error(400, "invalid_request_error", "messages.0.content.0.image.source.base64: invalid base64 data. "
                     "See https://docs.claude.com/en/api/errors")
    if status == 429:
        return error(429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit",
                     headers={"retry-after": "7"})
    if status == 529:
        return error(529, "overloaded_error", "Overloaded")
    kinds = {403: "permission_error", 404: "not_found_error", 413: "request_too_large", 500: "api_error",
             504: "timeout_error"}
    return error(status, kinds.get(status, "api_error"), f"Scripted error {status}.")


class _Turn:
    """One Messages call: which content blocks the answer has, and how they are sent."""

    def __init__(self, up: Settings, body: dict[str, Any], request_id: str = "") -> None:
        self.up, self.body, self.request_id = up, body, request_id
        self.model = str(body["model"])
        self.id = f"msg_fake{len(up.requests):06d}"
        self.blocks: list[dict[str, Any]] = []  # {"type", and text/thinking, or id/name/fragments}
        self.stop_reason = "end_turn"
        self._build()

    def plan(self) -> Plan:
        mode = plans.mode_of(self.model, "claude-")
        if not self.body.get("stream"):
            return plans.json_plan(self.up, mode, self._message())
        if mode == "midstream-error":
            failure = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            return StreamPlan([*list(self._events())[:5], ("error", failure)])
        if mode == "malformed":
            return StreamPlan([next(iter(self._events())), ("content_block_start", "{not json")])
        return plans.stream_plan(self.up, mode, self._events(), reset_after=5)

    # --- what the answer says ---

    def _build(self) -> None:
        choice = self.body.get("tool_choice") or {}
        tools = [t for t in self.body.get("tools") or [] if isinstance(t, dict)]
        forced = choice.get("type") in ("tool", "any") and tools  # the API prefills: no text before the call
        calls_tools = self.model == "claude-tools" and not _after_tool_result(self.body["messages"])
        if forced and (choice["type"] == "tool" or not calls_tools):
            self._tool(next((t for t in tools if t.get("name") == choice.get("name")), tools[0]), 0)
            self.stop_reason = "tool_use"
        elif calls_tools:
            if not forced:
                self._text(TOOL_PREAMBLE)
            for k in range(2):
                self._tool(tools[min(k, len(tools) - 1)] if tools else {"name": DEFAULT_TOOL_NAMES[k]}, k)
            self.stop_reason = "tool_use"
        elif self.model == "claude-tool-noargs" and not _after_tool_result(self.body["messages"]):
            self.blocks.append({"type": "tool_use", "id": "toolu_fake_noargs", "name": _first_name(tools),
                                "fragments": []})
            self.stop_reason = "tool_use"
        elif self.model == "claude-refusal":
            self.blocks.append({"type": "text", "pieces": []})
            self.stop_reason = "refusal"
        else:
            if self.model == "claude-thinking":
                self.blocks.append({"type": "thinking", "pieces": plans.words(THINKING)})
            self._text(self._reply_text())
        self._limit()

    def _reply_text(self) -> str:
        if _after_tool_result(self.body["messages"]):
            return TOOL_REPLY
        if self.model == "claude-echo":
            return plans.last_user_text(self.body["messages"])
        if self.model == "claude-thinking":
            return THINKING_REPLY
        if self.model in ("claude-reset", "claude-midstream-error"):
            return RESET_REPLY
        if self.model == "claude-slow":
            return "".join(f" tick{i}" for i in range(self.up.slow_chunks))
        return self.up.reply

    def _text(self, text: str) -> None:
        self.blocks.append({"type": "text", "pieces": plans.words(text)})

    def _tool(self, tool: dict[str, Any], k: int) -> None:
        arguments = json.dumps(_arguments(tool.get("input_schema"), k))
        fragments = [""] + [arguments[i : i + 7] for i in range(0, len(arguments), 7)]  # the real API opens with ""
        self.blocks.append({"type": "tool_use", "id": f"toolu_fake{len(self.up.requests):04d}x{k}",
                            "name": tool.get("name", DEFAULT_TOOL_NAMES[k]), "fragments": fragments})

    def _limit(self) -> None:
        """Cuts the text at max_tokens pieces, as the real API stops at max_tokens."""
        limit, used = int(self.body["max_tokens"]), 0
        if self.model == "claude-max-tokens":
            limit = 3
        for block in self.blocks:
            pieces = block.get("pieces")
            if pieces is not None and used + len(pieces) > limit:
                del pieces[max(limit - used, 0):]
                self.stop_reason = "max_tokens"
            used += len(pieces or block.get("fragments") or [])

    # --- usage (ground truth, by the gateway's request id) ---

    def _usage(self) -> dict[str, Any]:
        sent = {k: self.body.get(k) for k in ("system", "messages", "tools")}
        prompt = max(len(json.dumps(sent)), 4) // 4
        output = sum(len(b.get("pieces") or [f for f in b.get("fragments", []) if f]) + 1 for b in self.blocks)
        usage: dict[str, Any] = {"input_tokens": prompt, "cache_creation_input_tokens": 0,
                                 "cache_read_input_tokens": 0, "output_tokens": output, "service_tier": "standard"}
        if self.model == "claude-cached":
            usage.update(input_tokens=prompt // 4, cache_read_input_tokens=prompt // 2,
                         cache_creation_input_tokens=prompt - prompt // 4 - prompt // 2)
        if self.model == "claude-thinking":
            usage["output_tokens_details"] = {"thinking_tokens": len(self.blocks[0]["pieces"])}
        if self.request_id:
            self.up.usage_sent[self.request_id] = usage
        return usage

    # --- the wire ---

    def _message(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        for block in self.blocks:
            if block["type"] == "text":
                content.append({"type": "text", "text": "".join(block["pieces"])})
            elif block["type"] == "thinking":
                content.append({"type": "thinking", "thinking": "".join(block["pieces"]), "signature": SIGNATURE})
            else:
                arguments = "".join(block["fragments"])
                content.append({"type": "tool_use", "id": block["id"], "name": block["name"],
                                "input": json.loads(arguments) if arguments else {}})
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
                "stop_reason": self.stop_reason, "stop_sequence": None, "usage": self._usage()}

    def _events(self) -> Iterator[Event]:
        usage = self._usage()
        start_usage = {**usage, "output_tokens": 1}
        start_usage.pop("output_tokens_details", None)
        yield "message_start", {"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": start_usage}}
        for index, block in enumerate(self.blocks):
            yield from self._block_events(index, block)
        delta_usage = {"output_tokens": usage["output_tokens"]}
        if self.model == "claude-cached":  # cumulative input counts may come again in message_delta
            delta_usage.update({k: usage[k] for k in ("input_tokens", "cache_read_input_tokens",
                                                     "cache_creation_input_tokens")})
        if "output_tokens_details" in usage:
            delta_usage["output_tokens_details"] = usage["output_tokens_details"]
        yield "message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                                "usage": delta_usage}
        yield "message_stop", {"type": "message_stop"}

    def _block_events(self, index: int, block: dict[str, Any]) -> Iterator[Event]:
        if block["type"] == "tool_use":
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": f} for f in block["fragments"]]
        elif block["type"] == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": p} for p in block["pieces"]]
            deltas.append({"type": "signature_delta", "signature": SIGNATURE})
        else:
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in block["pieces"]]
        yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
        if index == 0:  # where the real API sends its first keep-alive
            yield "ping", {"type": "ping"}
        for delta in deltas:
            yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}


def _after_tool_result(messages: list[Any]) -> bool:
    last = messages[-1] if messages else {}
    content = last.get("content") if isinstance(last, dict) else None
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


def _first_name(tools: list[dict[str, Any]]) -> str:
    return str(tools[0].get("name")) if tools else DEFAULT_TOOL_NAMES[1]


def _arguments(schema: Any, k: int) -> dict[str, Any]:
    """Input for the k-th call: each required (else each) property gets a value of its type."""
    if not isinstance(schema, dict) or not schema.get("properties"):
        return {"city": TOOL_VALUES[k]}
    properties = schema["properties"]
    names = schema.get("required") or list(properties)
    values = {"integer": k + 21, "number": k + 21.5, "boolean": True, "array": [], "object": {}}
    out: dict[str, Any] = {}
    for name in names:
        spec = properties.get(name) or {}
        out[name] = spec["enum"][0] if spec.get("enum") else values.get(str(spec.get("type")), TOOL_VALUES[k])
    return out


def invalid_request_message(body: Any) -> str | None:
    """What the real API would reject this body for (a 400 invalid_request_error), if anything.

    Only the rules a translator could plausibly break; messages paraphrase the real ones.
    """
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        problem = _message_problem(message, messages[i - 1] if i else None)
        if problem is not None:
            return f"messages.{i}: {problem}"
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and not 0 <= value <= 1:
            return f"{name}: Input should be less than or equal to 1"
    if "temperature" in body and "top_p" in body:
        return "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
    return _thinking_problem(body) or _tools_problem(body)


def _message_problem(message: Any, previous: Any) -> str | None:
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        return "Unexpected role. Allowed roles are \"user\" or \"assistant\"; use the top-level system parameter"
    content = message.get("content")
    if isinstance(content, str):
        return None if content else "all messages must have non-empty content"
    if not isinstance(content, list) or not content:
        return "all messages must have non-empty content"
    for block in content:
        if not isinstance(block, dict) or "type" not in block:
            return "content blocks must be objects with a type"
        if block["type"] == "text" and not block.get("text"):
            return "text content blocks must be non-empty"
        if block["type"] == "tool_result" and block.get("tool_use_id") not in _tool_use_ids(previous):
            return ("unexpected `tool_use_id` found in `tool_result` blocks: "
                    "each needs a tool_use in the previous message")
    return None


def _tool_use_ids(message: Any) -> set[str]:
    content = message.get("content") if isinstance(message, dict) and message.get("role") == "assistant" else None
    return {b.get("id") for b in content or [] if isinstance(b, dict) and b.get("type") == "tool_use"}


def _thinking_problem(body: dict[str, Any]) -> str | None:
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or not 1024 <= budget < body["max_tokens"]:
        return "thinking.budget_tokens: must be >= 1024 and less than max_tokens"
    if "temperature" in body:
        return "`temperature` may only be set to 1 when thinking is enabled."
    if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        return "Thinking may not be enabled when tool_choice forces tool use."
    return None


def _tools_problem(body: dict[str, Any]) -> str | None:
    tools = body.get("tools") or []
    for i, tool in enumerate(tools):
        schema = tool.get("input_schema") if isinstance(tool, dict) else None
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return f"tools.{i}.input_schema.type: Input should be 'object'"
    choice = body.get("tool_choice")
    if choice is not None and not tools:
        return "tool_choice may only be specified while providing tools."
    if isinstance(choice, dict) and choice.get("type") == "tool" and choice.get("name") not in {
            t.get("name") for t in tools}:
        return "tool_choice.name: no tool with this name"
    return None
