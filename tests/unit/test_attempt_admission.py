"""Each attempt's Admission and UpstreamCall keep every field of the first but the route's own."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

from gateway_core.chat.attempts import RouteAttempts, _Timing
from gateway_core.chat.meter import Admission
from gateway_core.chat.route_health import RouteHealth
from gateway_core.config import ProviderSettings, Route, RoutingSettings
from gateway_core.pb.gateway.v1 import chat_pb2
from gateway_core.providers.base import UpstreamCall


def _distinct(cls: type, overrides: dict[str, Any]) -> dict[str, Any]:
    """A value for every field, each telling apart from the defaults."""
    return {f.name: overrides.get(f.name, object()) for f in dataclasses.fields(cls)}


def test_an_attempts_admission_differs_from_the_first_only_in_provider_model_and_timeout() -> None:
    call = UpstreamCall(**_distinct(UpstreamCall, {
        "request": chat_pb2.CreateChatCompletionRequest(model="m"), "timeout_seconds": None,
    }))
    first = Admission(**_distinct(Admission, {"call": call, "started": 100.0}))
    other = SimpleNamespace(name="second")
    settings = RoutingSettings()
    attempts = RouteAttempts(settings, {"second": other}, {"second": ProviderSettings(name="second", type="mock",
                                                                                       total_timeout_seconds=7.0)})
    route = Route(provider="second", model="upstream-2")
    timing = _Timing(first, settings, RouteHealth(settings))
    made = attempts._admission_for(first, route, timing)
    expected_call = dataclasses.replace(call, upstream_model="upstream-2", timeout_seconds=7.0)
    assert made == dataclasses.replace(first, provider=other, call=expected_call)
