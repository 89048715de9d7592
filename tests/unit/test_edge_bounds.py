"""Bounds on request bodies (http_facade.bounds) and the [http] section that configures them."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.config import ConfigError, parse_settings
from gateway_core.config_http import HttpSettings
from http_facade.bounds import check_bounds
from http_facade.edge_limits import EdgeLimits
from http_facade.errors import ApiError

SMALL = EdgeLimits(max_json_depth=5, max_array_items=3, max_messages=2, max_string_chars=30, max_n=4,
                   max_tokens_ceiling=100)
HI = [{"role": "user", "content": "hi"}]


def _refusal(payload: dict[str, Any], limits: EdgeLimits = SMALL) -> ApiError:
    with pytest.raises(ApiError) as caught:
        check_bounds(payload, limits)
    assert caught.value.status == 400
    return caught.value


def test_a_request_within_bounds_passes() -> None:
    check_bounds({"model": "m", "messages": HI, "n": 4, "max_tokens": 100, "tools": [{"a": {"b": 1}}]}, SMALL)


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"messages": [{"role": "user", "content": "x" * 31}]}, "messages[0].content", "string_above_max_length"),
        ({"messages": HI, "tools": [{"function": {"parameters": {"p": {}}}}]}, "tools[0].function.parameters.p",
         "json_too_deep"),
        ({"messages": HI, "stop": [1, 2, 3, 4]}, "stop", "array_above_max_length"),
        ({"messages": HI * 3}, "messages", "array_above_max_length"),
        ({"messages": HI, "n": 5}, "n", "integer_above_max_value"),
        ({"messages": HI, "max_tokens": 101}, "max_tokens", "integer_above_max_value"),
        ({"messages": HI, "max_completion_tokens": 2**64}, "max_completion_tokens", "integer_above_max_value"),
        ({"messages": HI, "metadata": {"k" * 31: "v"}}, "metadata", "string_above_max_length"),
        ({"k" * 31: 1, "messages": HI}, None, "string_above_max_length"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "y" * 31}]}]},
         "messages[0].content[0].text", "string_above_max_length"),
    ],
)
def test_each_bound_names_its_param(payload: dict[str, Any], param: str | None, code: str) -> None:
    error = _refusal(payload)
    assert (error.param, error.code) == (param, code)
    assert f"'{param or ''}'" in error.message


def test_names_are_short_whatever_the_string_limit() -> None:
    roomy = EdgeLimits()
    assert _refusal({"model": "m" * 257, "messages": HI}, roomy).param == "model"
    assert _refusal({"messages": [{"role": "user", "content": "x", "name": "n" * 257}]}, roomy).param == "messages[0].name"


def test_tools_are_capped_at_openais_128() -> None:
    error = _refusal({"messages": HI, "tools": [{}] * 129}, EdgeLimits())
    assert error.param == "tools" and "maximum length 128" in error.message


def test_wrong_types_are_left_to_the_converters() -> None:
    check_bounds({"messages": "not a list", "n": "9", "max_tokens": 1e30, "model": None}, SMALL)


def test_the_depth_check_survives_the_deepest_document_orjson_accepts() -> None:
    deep: Any = []
    for _ in range(1000):
        deep = [deep]
    assert _refusal({"messages": deep}, EdgeLimits()).code == "json_too_deep"


def test_facade_and_core_agree_on_the_http_section() -> None:
    assert asdict(EdgeLimits()) == asdict(HttpSettings())
    assert [f.name for f in fields(EdgeLimits)] == [f.name for f in fields(HttpSettings)]


def test_http_section_is_parsed_and_checked() -> None:
    settings = parse_settings({"http": {"max_body_bytes": 1024, "header_timeout_seconds": 2.5}}, {})
    assert settings.http.max_body_bytes == 1024 and settings.http.header_timeout_seconds == 2.5
    assert EdgeLimits(**asdict(settings.http)).max_body_bytes == 1024
    with pytest.raises(ConfigError) as caught:
        parse_settings({"http": {"max_body_bytes": 0, "max_n": 500, "max_json_depth": 1.5, "max_bytes": 1,
                                 "body_timeout_seconds": True}}, {})
    assert sorted(caught.value.problems) == [
        "http.body_timeout_seconds: must be a positive number",
        "http.max_body_bytes: must be a positive whole number",
        "http.max_bytes: unknown setting",
        "http.max_json_depth: must be a positive whole number",
        "http.max_n: must be at most 128",
    ]


def test_edge_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        EdgeLimits(max_body_bytes=0)
    with pytest.raises(ValueError):
        EdgeLimits(max_json_depth=10_000)


# --- The walk is skipped for bodies too small to break a bound: same answers either way ---------

_JSON_LEAVES = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=40)
_JSON = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=35), inner, max_size=4),
    max_leaves=30,
)


def _outcome(payload: dict[str, Any], limits: EdgeLimits, body: bytes | None) -> tuple[Any, ...] | None:
    try:
        check_bounds(payload, limits, body)
    except ApiError as error:
        return (error.status, error.message, error.param, error.code)
    return None


@settings(max_examples=400, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=35), _JSON, max_size=5))
def test_checking_with_the_body_answers_as_the_full_walk(payload: dict[str, Any]) -> None:
    body = orjson.dumps(payload)
    for limits in (SMALL, EdgeLimits(max_json_depth=3, max_array_items=4, max_string_chars=12), EdgeLimits()):
        assert _outcome(payload, limits, body) == _outcome(payload, limits, None)


@pytest.mark.parametrize(
    "payload",
    [
        {"messages": [{"role": "user", "content": "x" * 31}]},
        {"messages": HI, "stop": [1, 2, 3, 4]},
        {"messages": HI, "tools": [{"function": {"parameters": {"p": {}}}}]},
        {"k" * 31: 1, "messages": HI},
    ],
)
def test_a_body_that_breaks_a_bound_is_still_walked(payload: dict[str, Any]) -> None:
    body = orjson.dumps(payload)
    assert _outcome(payload, SMALL, body) == _outcome(payload, SMALL, None) is not None


def test_escaped_text_never_hides_a_long_string() -> None:
    # Six bytes of JSON per character: the decoded string is still measured against the limit.
    body = b'{"messages":[{"role":"user","content":"' + b"\\u0041" * 31 + b'"}]}'
    payload = orjson.loads(body)
    assert _outcome(payload, SMALL, body) == _outcome(payload, SMALL, None) is not None


TOP_LEVEL_BREAKS: dict[str, Any] = {
    "messages": HI * 3, "tools": [{}] * 129, "n": 5, "max_tokens": 101, "max_completion_tokens": 101,
    "model": "m" * 257, "user": "u" * 257, "safety_identifier": "s" * 257, "prompt_cache_key": "p" * 257,
}


@given(st.lists(st.sampled_from(sorted(TOP_LEVEL_BREAKS)), min_size=1, unique=True), st.randoms())
@settings(max_examples=200, deadline=None)
def test_of_several_broken_top_level_bounds_the_first_in_check_order_is_reported(
    broken: list[str], rng: Any
) -> None:
    """Only the fields present are looked at now; which one is reported must not depend on that
    (nor on the payload's key order): messages, tools, n, the output limits, then the names."""
    order = ["messages", "tools", "n", "max_tokens", "max_completion_tokens", "model", "user", "safety_identifier",
             "prompt_cache_key"]
    rng.shuffle(broken)
    payload = {name: TOP_LEVEL_BREAKS[name] for name in broken}
    payload.setdefault("messages", HI)
    error = _refusal(payload, EdgeLimits(max_messages=2, max_n=4, max_tokens_ceiling=100))
    assert error.param == min(broken, key=order.index)


def test_a_long_message_name_or_tool_call_id_is_refused_with_its_place() -> None:
    messages = [*HI, {"role": "tool", "content": "x", "tool_call_id": "t" * 257}]
    assert _refusal({"messages": messages}, EdgeLimits()).param == "messages[1].tool_call_id"
    messages = [{"role": "user", "content": "x", "name": "n" * 257}, *HI]
    assert _refusal({"messages": messages}, EdgeLimits()).param == "messages[0].name"
    check_bounds({"messages": [{"role": "user", "content": "x", "name": "n" * 256}]}, EdgeLimits())
