"""Typed readers for JSON request values that fail with OpenAI-style 400s naming the param.

JSON types are checked exactly: `true` is not the integer 1, `1.0` is not an
integer, `1` is a valid number. The messages follow OpenAI's wording so that
clients matching on them keep working.
"""

from __future__ import annotations

from typing import Any

from http_facade.errors import ApiError, invalid_request


def describe(value: Any) -> str:
    """JSON type name of a value, for error messages ("a string", "null", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def missing(param: str) -> ApiError:
    """A required parameter is absent (or null)."""
    return invalid_request(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def wrong_type(param: str, expected: str, value: Any) -> ApiError:
    """A parameter has the wrong JSON type."""
    return invalid_request(
        f"Invalid type for '{param}': expected {expected}, but got {describe(value)} instead.",
        param,
        "invalid_type",
    )


def invalid_value(param: str, value: Any, supported: str) -> ApiError:
    """A parameter is not one of an enumerated set of values."""
    return invalid_request(
        f"Invalid value: '{value}'. Supported values are: {supported}.", param, "invalid_value"
    )


def string(value: Any, param: str) -> str:
    """value, if it is a JSON string."""
    if not isinstance(value, str):
        raise wrong_type(param, "a string", value)
    return value


def boolean(value: Any, param: str) -> bool:
    """value, if it is a JSON boolean (not 0 or 1)."""
    if not isinstance(value, bool):
        raise wrong_type(param, "a boolean", value)
    return value


def json_object(value: Any, param: str) -> dict[str, Any]:
    """value, if it is a JSON object."""
    if not isinstance(value, dict):
        raise wrong_type(param, "an object", value)
    return value


def number(value: Any, param: str, low: float, high: float) -> float:
    """value as a float, if it is a JSON number within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise wrong_type(param, "a number", value)
    _check_range(value, param, low, high, "decimal")
    return float(value)


def integer(value: Any, param: str, low: int, high: int) -> int:
    """value, if it is a JSON integer within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type(param, "an integer", value)
    _check_range(value, param, low, high, "integer")
    return value


def required_object(fields: dict[str, Any], key: str, parent: str) -> dict[str, Any]:
    """fields[key], which must be a JSON object."""
    value = fields.get(key)
    if value is None:
        raise missing(f"{parent}.{key}")
    return json_object(value, f"{parent}.{key}")


def required_string(fields: dict[str, Any], key: str, parent: str) -> str:
    """fields[key], which must be a JSON string."""
    value = fields.get(key)
    if value is None:
        raise missing(f"{parent}.{key}")
    return string(value, f"{parent}.{key}")


def optional_string(fields: dict[str, Any], key: str, parent: str) -> str:
    """fields[key] if it is a string, "" if absent or null (proto3's unset)."""
    value = fields.get(key)
    return "" if value is None else string(value, f"{parent}.{key}")


def _show(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_range(value: float, param: str, low: float, high: float, kind: str) -> None:
    if value < low:
        raise invalid_request(
            f"Invalid '{param}': {kind} below minimum value. "
            f"Expected a value >= {_show(low)}, but got {_show(value)} instead.",
            param,
            f"{kind}_below_min_value",
        )
    if value > high:
        raise invalid_request(
            f"Invalid '{param}': {kind} above maximum value. "
            f"Expected a value <= {_show(high)}, but got {_show(value)} instead.",
            param,
            f"{kind}_above_max_value",
        )
