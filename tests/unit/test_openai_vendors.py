"""Vendor dialects of the OpenAI translator: detection, the per-vendor body, unsupported
parameters (reject and drop), Mistral's tool-call ids."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_core.config import ProviderSettings
from gateway_core.errors import GatewayError, Reason
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import ChatRequest
from gateway_core.providers.openai import translate
from http_facade.errors import REASONS
from tests.providers_support import call_for, user_request

BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "deepseek": "https://api.deepseek.com",
    "mistral": "https://api.mistral.ai/v1",
    "groq": "https://api.groq.com/openai/v1",
    "vllm": "http://10.0.0.5:8000/v1",
    "ollama": "http://localhost:11434/v1",
    "generic": "http://127.0.0.1:8000/v1",
}
VENDORS = tuple(BASE_URLS)
OLD_ID = "call_abc123"  # OpenAI-style: not valid for Mistral
MISTRAL_OLD_ID = translate.mistral_tool_call_id(OLD_ID)


def provider_settings(vendor: str, **overrides: Any) -> ProviderSettings:
    """Settings for vendor; explicit only for vendors that cannot be detected from the URL."""
    explicit = vendor if vendor in ("vllm", "ollama") else ""
    fields: dict[str, Any] = {"vendor": explicit, **overrides}
    return ProviderSettings(name=vendor, type="openai", base_url=BASE_URLS[vendor], **fields)


def prepare(vendor: str, request: ChatRequest, *, stream: bool = False,
            **overrides: Any) -> translate.PreparedRequest:
    dialect = translate.dialect_for(provider_settings(vendor, **overrides))
    return translate.prepare_request(call_for(request, "m"), stream=stream, dialect=dialect)


def body_for(vendor: str, request: ChatRequest, **overrides: Any) -> dict[str, Any]:
    return prepare(vendor, request, **overrides).body


@pytest.mark.parametrize(("base_url", "vendor"), [
    ("https://api.openai.com/v1", "openai"),
    ("https://eu.api.openai.com/v1", "openai"),
    ("https://API.OpenAI.com./v1", "openai"),
    ("https://api.deepseek.com", "deepseek"),
    ("https://api.deepseek.com/v1", "deepseek"),
    ("https://api.mistral.ai/v1", "mistral"),
    ("https://codestral.mistral.ai/v1", "mistral"),
    ("https://api.groq.com/openai/v1", "groq"),
    ("http://localhost:11434/v1", "generic"),
    ("http://127.0.0.1:8000/v1", "generic"),
    ("https://api.openai.com.evil.example/v1", "generic"),
    ("https://notopenai.com/v1", "generic"),
    ("https://evil.example/api.openai.com/v1", "generic"),
    ("not a url", "generic"),
    ("http://[::1", "generic"),
])
def test_vendor_is_detected_from_the_host(base_url: str, vendor: str) -> None:
    assert translate.detect_vendor(base_url) == vendor


def test_an_explicit_vendor_wins_over_the_host() -> None:
    settings = ProviderSettings(name="x", type="openai", base_url="https://api.openai.com/v1", vendor="vllm")
    assert translate.dialect_for(settings).profile.name == "vllm"


def everything_request(*, stream: bool = False) -> ChatRequest:
    """A request that sets every field some vendor treats differently."""
    cls = chat_pb2.StreamChatCompletionRequest if stream else chat_pb2.CreateChatCompletionRequest
    r = cls(model="client-model", max_tokens=100, max_completion_tokens=200, seed=7, logprobs=True,
            top_logprobs=2, n=1, temperature=0.0)
    r.messages.add(role=types_pb2.ROLE_DEVELOPER, content="Be terse.")
    r.messages.add(role=types_pb2.ROLE_USER, content="Weather?", name="alice")
    r.messages.add(role=types_pb2.ROLE_ASSISTANT, extra_json='{"reasoning_content": "Look it up."}',
                   tool_calls=[chat_pb2.ToolCall(id=OLD_ID, type="function", function=chat_pb2.FunctionCall(
                       name="get_weather", arguments="{}"))])
    r.messages.add(role=types_pb2.ROLE_TOOL, content="21C", tool_call_id=OLD_ID)
    return r


def expected_messages(*, developer: str = "developer", name: bool = True, reasoning: bool = True,
                      call_id: str = OLD_ID) -> list[dict[str, Any]]:
    user: dict[str, Any] = {"role": "user", "content": "Weather?"}
    if name:
        user["name"] = "alice"
    assistant: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}
    if reasoning:
        assistant["reasoning_content"] = "Look it up."
    return [{"role": developer, "content": "Be terse."}, user, assistant,
            {"role": "tool", "content": "21C", "tool_call_id": call_id}]


OPENAI_PARAMS = {"temperature": 0.0, "n": 1, "seed": 7, "logprobs": True, "top_logprobs": 2}
# vendor -> (top-level parameters besides model/messages, messages, parameters dropped), policy "drop".
VENDOR_BODIES: dict[str, tuple[dict[str, Any], list[dict[str, Any]], tuple[str, ...]]] = {
    "openai": ({**OPENAI_PARAMS, "max_completion_tokens": 200}, expected_messages(), ()),
    "deepseek": ({**OPENAI_PARAMS, "max_tokens": 200}, expected_messages(), ()),
    "mistral": (
        {"temperature": 0.0, "n": 1, "random_seed": 7, "max_tokens": 200},
        expected_messages(developer="system", name=False, reasoning=False, call_id=MISTRAL_OLD_ID),
        ("logprobs", "top_logprobs"),
    ),
    "groq": (
        {"temperature": 1e-8, "n": 1, "seed": 7, "max_completion_tokens": 200},
        expected_messages(name=False),
        ("logprobs", "top_logprobs"),
    ),
    "vllm": ({**OPENAI_PARAMS, "max_tokens": 200}, expected_messages(), ()),
    "ollama": ({**OPENAI_PARAMS, "max_tokens": 200}, expected_messages(), ()),
    # Unknown servers get what an OpenAI client would send, the limit once as max_tokens.
    "generic": ({**OPENAI_PARAMS, "max_tokens": 200}, expected_messages(), ()),
}


@pytest.mark.parametrize("vendor", VENDORS)
def test_each_vendor_gets_its_own_body(vendor: str) -> None:
    params, messages, dropped = VENDOR_BODIES[vendor]
    prepared = prepare(vendor, everything_request(), unsupported_param_policy="drop")
    assert prepared.body == {"model": "m", "messages": messages, **params}
    assert prepared.dropped == dropped


@pytest.mark.parametrize("vendor", VENDORS)
def test_streams_ask_for_usage_except_where_it_is_refused(vendor: str) -> None:
    body = body_for(vendor, everything_request(stream=True), stream=True, unsupported_param_policy="drop")
    assert body["stream"] is True
    # Mistral refuses stream_options (422 extra_forbidden) and sends usage anyway.
    assert body.get("stream_options") == (None if vendor == "mistral" else {"include_usage": True})


LIMITS = [
    # client's (max_tokens, max_completion_tokens) -> the one field sent, per vendor
    ((50, None), {"openai": "max_completion_tokens", "deepseek": "max_tokens", "mistral": "max_tokens",
                  "groq": "max_completion_tokens", "vllm": "max_tokens", "ollama": "max_tokens",
                  "generic": "max_tokens"}, 50),
    ((None, 60), {"openai": "max_completion_tokens", "deepseek": "max_tokens", "mistral": "max_tokens",
                  "groq": "max_completion_tokens", "vllm": "max_tokens", "ollama": "max_tokens",
                  "generic": "max_tokens"}, 60),
    # Both set: the value the hold was computed from (max_completion_tokens), once.
    ((10, 20), {"openai": "max_completion_tokens", "deepseek": "max_tokens", "mistral": "max_tokens",
                "groq": "max_completion_tokens", "vllm": "max_tokens", "ollama": "max_tokens",
                "generic": "max_tokens"}, 20),
]


@pytest.mark.parametrize(("limits", "fields", "value"), LIMITS)
@pytest.mark.parametrize("vendor", VENDORS)
def test_the_output_limit_goes_once_under_the_vendors_name(
    vendor: str, limits: tuple[int | None, int | None], fields: dict[str, str], value: int,
) -> None:
    legacy, modern = limits
    request = user_request(**{k: v for k, v in (("max_tokens", legacy), ("max_completion_tokens", modern)) if v})
    body = body_for(vendor, request)
    assert {k: body[k] for k in ("max_tokens", "max_completion_tokens") if k in body} == {fields[vendor]: value}


@pytest.mark.parametrize(("vendor", "override"), [("openai", "max_tokens"), ("mistral", "max_completion_tokens"),
                                                  ("generic", "max_tokens"), ("groq", "max_tokens")])
def test_the_configured_limit_field_overrides_the_vendor(vendor: str, override: str) -> None:
    body = body_for(vendor, user_request(max_completion_tokens=30, max_tokens=99), max_tokens_field=override)
    assert {k: body[k] for k in ("max_tokens", "max_completion_tokens") if k in body} == {override: 30}


def test_no_limit_set_sends_none() -> None:
    assert "max_tokens" not in body_for("mistral", user_request())


REFUSALS = [
    # (vendor, request fields, extra settings, the parameter refused)
    ("groq", {"logprobs": False}, {}, "logprobs"),
    ("groq", {"top_logprobs": 3}, {}, "top_logprobs"),
    ("groq", {"logit_bias_json": '{"50256": -100}'}, {}, "logit_bias"),
    ("groq", {"n": 2}, {}, "n"),
    ("mistral", {"logprobs": True}, {}, "logprobs"),
    ("mistral", {"logit_bias_json": '{"1": 5}'}, {}, "logit_bias"),
    ("mistral", {"extra_json": '{"store": true}'}, {}, "store"),
    ("generic", {"reasoning_effort": "high"}, {"unsupported_params": ("reasoning_effort",)}, "reasoning_effort"),
    ("ollama", {"extra_json": '{"service_tier": "flex"}'}, {"unsupported_params": ("service_tier",)}, "service_tier"),
    ("openai", {"user": "u-1"}, {"unsupported_params": ("user",)}, "user"),
]


@pytest.mark.parametrize(("vendor", "fields", "settings", "param"), REFUSALS)
def test_reject_policy_refuses_a_parameter_the_client_set(
    vendor: str, fields: dict[str, Any], settings: dict[str, Any], param: str,
) -> None:
    with pytest.raises(GatewayError) as caught:
        prepare(vendor, user_request(**fields), **settings)
    error = caught.value
    assert error.reason == Reason.UNSUPPORTED_PARAMETER and error.param == param
    assert f"'{param}'" in error.message
    kind = REASONS[error.reason.value]  # what the facade answers with
    assert (kind.status, kind.code) == (400, "unsupported_parameter")


@pytest.mark.parametrize(("vendor", "fields", "settings", "param"), REFUSALS)
def test_drop_policy_removes_it_and_proceeds(
    vendor: str, fields: dict[str, Any], settings: dict[str, Any], param: str,
) -> None:
    prepared = prepare(vendor, user_request(**fields), unsupported_param_policy="drop", **settings)
    assert param not in prepared.body and prepared.dropped == (param,)
    assert prepared.body["messages"] == [{"role": "user", "content": "Hello there, gateway!"}]


@pytest.mark.parametrize(("vendor", "fields", "settings"), [
    ("groq", {"n": 1}, {}),  # n is fine when it is 1
    ("groq", {"temperature": 0.5, "seed": 1}, {}),
    ("mistral", {"frequency_penalty": 0.1}, {}),
    ("generic", {}, {"unsupported_params": ("tools", "user", "logprobs")}),  # listed but not set
    # The gateway's own fields are never "unsupported", whatever the list says.
    ("generic", {"max_completion_tokens": 5}, {"unsupported_params": ("max_completion_tokens", "model", "messages")}),
])
def test_parameters_the_client_did_not_set_never_count(
    vendor: str, fields: dict[str, Any], settings: dict[str, Any],
) -> None:
    prepared = prepare(vendor, user_request(**fields), **settings)
    assert prepared.dropped == ()


def test_the_first_refused_parameter_is_named() -> None:
    with pytest.raises(GatewayError) as caught:
        prepare("groq", user_request(logprobs=True, n=3))
    assert caught.value.param in ("n", "logprobs")


MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")


@given(st.text(max_size=200))
def test_mistral_ids_are_valid_and_deterministic(call_id: str) -> None:
    mapped = translate.mistral_tool_call_id(call_id)
    assert MISTRAL_ID.fullmatch(mapped)
    assert translate.mistral_tool_call_id(call_id) == mapped
    assert translate.mistral_tool_call_id(mapped) == mapped  # idempotent: a mapped id is kept


@pytest.mark.parametrize("call_id", ["abcDEF123", "000000000", "ZZZZZZZZZ"])
def test_ids_already_valid_for_mistral_are_kept(call_id: str) -> None:
    assert translate.mistral_tool_call_id(call_id) == call_id


def test_mistral_id_mapping_is_stable_and_spreads() -> None:
    # Pinned: a process-dependent mapping (Python's salted hash()) would still
    # agree with itself inside one test run, but not across the gateway's
    # replicas, so the same history would reach Mistral with different ids.
    assert MISTRAL_OLD_ID == "oanjqsXZK"
    near = ["call_1", "call_2", "call_01", "toolu_01", "abcDEF12", "abcDEF1234", "abcDEF12_", "é"]
    assert len({translate.mistral_tool_call_id(i) for i in near}) == len(near)


def test_mistral_ids_agree_within_and_across_requests() -> None:
    first = body_for("mistral", everything_request(), unsupported_param_policy="drop")
    second = body_for("mistral", everything_request(stream=True), stream=True, unsupported_param_policy="drop")
    for body in (first, second):
        assistant, tool = body["messages"][2], body["messages"][3]
        assert assistant["tool_calls"][0]["id"] == tool["tool_call_id"] == MISTRAL_OLD_ID


def test_other_vendors_keep_tool_call_ids() -> None:
    for vendor in ("openai", "groq", "deepseek", "generic"):
        body = body_for(vendor, everything_request(), unsupported_param_policy="drop")
        assert body["messages"][3]["tool_call_id"] == OLD_ID


def test_response_ids_pass_through_unchanged() -> None:
    body = {"id": "x", "created": 1, "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "AbC123xyZ", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]}
    response = translate.from_response(body, call_for(user_request()))
    assert response.choices[0].message.tool_calls[0].id == "AbC123xyZ"


def test_deepseek_reasoning_content_goes_back_as_it_came() -> None:
    request = user_request()
    request.messages.add(role=types_pb2.ROLE_ASSISTANT, content="4",
                         extra_json=json.dumps({"reasoning_content": "2+2=4", "prefix": False}))
    body = body_for("deepseek", request)
    assert body["messages"][1] == {"role": "assistant", "content": "4", "reasoning_content": "2+2=4", "prefix": False}


def test_deepseek_reasoning_deltas_travel_in_extra_json() -> None:
    translator = translate.StreamTranslator(call_for(user_request(stream=True)))
    chunks = translator.feed({"id": "x", "created": 1, "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": None, "reasoning_content": "Hmm"}}]})
    assert json.loads(chunks[0].choices[0].delta.extra_json) == {"reasoning_content": "Hmm"}


@pytest.mark.parametrize(("usage", "cached"), [
    ({"prompt_tokens": 10, "completion_tokens": 2, "prompt_cache_hit_tokens": 6, "prompt_cache_miss_tokens": 4}, 6),
    # OpenAI's own field wins when both are there.
    ({"prompt_tokens": 10, "completion_tokens": 2, "prompt_cache_hit_tokens": 6,
      "prompt_tokens_details": {"cached_tokens": 3}}, 3),
    ({"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 0},
      "prompt_cache_hit_tokens": 6}, 0),
    ({"prompt_tokens": 10, "completion_tokens": 2}, 0),
])
def test_deepseek_cache_hits_become_cached_tokens(usage: dict[str, Any], cached: int) -> None:
    assert translate.usage_from(usage).cached_tokens == cached
