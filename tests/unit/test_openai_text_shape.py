"""TextShape: an event that is a learned text delta's JSON around another plain string is read without the parser,
and only then: whatever the parser would read differently (escapes, other fields, tricky JSON) takes the parser."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from gateway_core.providers.openai.text_shape import TextShape

HEAD = '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-x",'


def event(content: str, *, head: str = HEAD, tail: str = ',"finish_reason":null}]}') -> str:
    return head + '"choices":[{"index":0,"delta":{"content":' + json.dumps(content, ensure_ascii=False) + "}" + tail


def learned(raw: str) -> TextShape | None:
    data = orjson.loads(raw)
    return TextShape.learn(raw, data, data["choices"][0].get("index", 0), data["choices"][0]["delta"]["content"])


def test_an_event_of_the_learned_shape_gives_its_content_as_the_parser_would() -> None:
    shape = learned(event("tok "))
    assert shape is not None and shape.index == 0 and shape.data == orjson.loads(event("tok "))
    for content in ["", "x", "tok ", " the", "é", "日本語", "🙂", "a'b", "{}", "[1]", ":1,", "null"]:
        raw = event(content)
        assert shape.match(raw) == content == orjson.loads(raw)["choices"][0]["delta"]["content"]


@pytest.mark.parametrize("raw", [
    event("line\nbreak"), event('say "hi"'), event("back\\slash"), event("tab\t"), event("\u2028"),
    HEAD + '"choices":[{"index":0,"delta":{"content":"a\\u0062"},"finish_reason":null}]}',  # an escape
    HEAD + '"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]}',  # other text around
    HEAD + '"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}],"usage":{}}',
    '{"id":"other","object":"chat.completion.chunk","created":1700000000,"model":"gpt-x",'
    '"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}',
    HEAD + '"choices":[{"index":0,"delta":{"content":"a"}}]}',
    HEAD + '"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]} ',
    HEAD[:-1],
    "[DONE]",
    "",
])
def test_anything_else_takes_the_parser(raw: str) -> None:
    shape = learned(event("tok "))
    assert shape is not None
    assert shape.match(raw) is None


def test_raw_control_characters_take_the_parser_which_refuses_them() -> None:
    shape = learned(event("tok "))
    assert shape is not None
    raw = HEAD + '"choices":[{"index":0,"delta":{"content":"a\x01b"},"finish_reason":null}]}'
    assert shape.match(raw) is None
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)


@pytest.mark.parametrize("content", ["line\nbreak", 'a "quote"', "back\\slash", "\x00"])
def test_a_content_that_is_not_its_own_literal_teaches_nothing(content: str) -> None:
    assert learned(event(content)) is None


def test_whitespace_and_field_order_of_a_vendor_are_learned_as_they_are() -> None:
    raw = json.dumps({"choices": [{"delta": {"content": "a"}, "index": 1, "finish_reason": None}],
                      "model": "m", "id": "x", "created": 1})  # Python's separators, choices first
    data = orjson.loads(raw)
    shape = TextShape.learn(raw, data, 1, "a")
    assert shape is not None and shape.index == 1
    assert shape.match(raw.replace('"a"', '"bcd"')) == "bcd"


def test_the_content_literal_is_found_even_when_its_text_also_appears_elsewhere() -> None:
    raw = event("gpt-x")  # the model's name is the token: the literal occurs twice
    shape = learned(raw)
    assert shape is not None
    assert shape.match(event("other")) == "other"
    assert shape.match(event("gpt-x")) == "gpt-x"


def _adversarial(content_json: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    raw = HEAD + '"choices":[{"index":0,"delta":{"content":' + content_json + '},"finish_reason":null}]'
    for key, value in extra.items():
        raw += f',"{key}":{value}'
    raw += "}"
    return raw, orjson.loads(raw)


def test_a_literal_that_is_not_the_contents_value_is_never_learned() -> None:
    # The content is escaped, so its plain literal appears only as another field's key.
    raw, data = _adversarial('"\\u0074ok"', tok=1)
    assert data["choices"][0]["delta"]["content"] == "tok"
    assert TextShape.learn(raw, data, 0, "tok") is None
    # ... or as another field's value.
    raw, data = _adversarial('"\\u0074ok"', other='"tok"')
    assert TextShape.learn(raw, data, 0, "tok") is None
    # ... or across a string boundary: '":1,"' spans `"a":1,"b"`, a value and the next key.
    raw, data = _adversarial('"\\u003a1,"', a=1, b=2)
    assert data["choices"][0]["delta"]["content"] == ":1,"
    assert TextShape.learn(raw, data, 0, ":1,") is None


def test_a_duplicate_key_the_parser_overrides_is_never_learned() -> None:
    raw = HEAD + '"choices":[{"index":0,"delta":{"content":"a","content":"b"},"finish_reason":null}]}'
    data = orjson.loads(raw)
    assert data["choices"][0]["delta"] == {"content": "b"}
    # The last "b" is what the parser keeps, so it is learned there; a match reads what the parser would.
    shape = TextShape.learn(raw, data, 0, "b")
    assert shape is not None
    other = raw[: raw.rfind('"b"')] + '"zz"' + raw[raw.rfind('"b"') + 3:]
    assert shape.match(other) == orjson.loads(other)["choices"][0]["delta"]["content"] == "zz"
    # The overridden "a" is never taken for the content.
    assert TextShape.learn(raw, data, 0, "a") is None
    overridden = raw.replace('"a"', '"zz"')
    assert orjson.loads(overridden)["choices"][0]["delta"]["content"] == "b"
