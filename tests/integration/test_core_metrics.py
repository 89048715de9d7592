"""`tollgate core` alone serves /metrics on [metrics] address: plain HTTP, optional bearer token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from gateway_core.config import ConfigError
from gateway_core.server import start_core
from tests.gateway_support import settings_for

TOKEN = "core-metrics-token-0123"


async def test_the_core_listener_serves_metrics_behind_its_token(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, metrics={"address": "127.0.0.1:0", "token": TOKEN})
    core = await start_core(settings, address="127.0.0.1:0")
    try:
        assert core.metrics_listener is not None
        base = f"http://127.0.0.1:{core.metrics_listener.port}"
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{base}/metrics")).status_code == 401
            assert (await http.get(f"{base}/metrics", headers={"authorization": "Bearer wrong"})).status_code == 401
            ok = await http.get(f"{base}/metrics", headers={"authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/plain")
            assert "# TYPE tollgate_holds_outstanding gauge" in ok.text
            assert (await http.get(f"{base}/other", headers={"authorization": f"Bearer {TOKEN}"})).status_code == 404
            assert (await http.post(f"{base}/metrics", headers={"authorization": f"Bearer {TOKEN}"})).status_code == 404
        # A client that connects and says nothing does not hold the listener up.
        reader, writer = await asyncio.open_connection("127.0.0.1", core.metrics_listener.port)
        writer.write(b"GARBAGE\r\n\r\n")
        await writer.drain()
        assert (await reader.read()).startswith(b"HTTP/1.1 404")
        writer.close()
    finally:
        await core.stop(grace_seconds=1)


async def test_without_an_address_the_core_opens_no_listener(tmp_path: Path) -> None:
    core = await start_core(settings_for(tmp_path), address="127.0.0.1:0")
    try:
        assert core.metrics_listener is None
    finally:
        await core.stop(grace_seconds=1)


@pytest.mark.parametrize(
    "section, problem",
    [
        ({"metrics": {"address": "nowhere"}}, "metrics.address: 'nowhere' is not HOST:PORT"),
        ({"metrics": {"token": "short"}}, "metrics.token: must be a string of at least 16 characters"),
        ({"metrics": {"port": 9}}, "metrics.port: unknown setting"),
        ({"logging": {"level": "loud"}}, "logging.level: 'loud' is not one of debug, error, info, warning"),
        ({"logging": {"format": "xml"}}, "logging.format: 'xml' is not one of json, text"),
        ({"tracing": {"enabled": "yes"}}, "tracing.enabled: must be true or false"),
        ({"tracing": {"otlp_endpoint": "collector:4318"}}, "tracing.otlp_endpoint: 'collector:4318' is not an http(s) URL"),
        ({"tracing": {"service_name": ""}}, "tracing.service_name: must be a non-empty string"),
    ],
)
def test_bad_observability_settings_are_named(tmp_path: Path, section: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_for(tmp_path, **section)
    assert raised.value.problems == [problem]


def test_observability_settings_parse(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path,
        logging={"level": "DEBUG", "format": "text"},
        tracing={"enabled": True, "otlp_endpoint": "http://collector:4318/v1/traces", "service_name": "gw"},
    )
    observability = settings.observability
    assert (observability.logging.level, observability.logging.format) == ("debug", "text")
    assert observability.tracing.enabled and observability.tracing.service_name == "gw"
    assert observability.metrics.address == "" and "token" not in repr(observability.metrics)


async def test_a_taken_metrics_port_fails_start_with_the_os_error(tmp_path: Path) -> None:
    taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = taken.sockets[0].getsockname()[1]
    try:
        with pytest.raises(OSError):
            await start_core(settings_for(tmp_path, metrics={"address": f"127.0.0.1:{port}"}), address="127.0.0.1:0")
    finally:
        taken.close()
        await taken.wait_closed()
