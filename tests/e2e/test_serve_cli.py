"""`tollgate serve` on embedded defaults, as a newcomer runs it: a real process, real ports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import click
import httpx
import openai
import pytest
from click.testing import CliRunner

from gateway_core.cli import main
from tests.process_support import TOLLGATE, free_port

KEY = re.compile(r"sk-tg-[0-9A-Za-z]{12}_[0-9A-Za-z]{36}")


def _start(cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*TOLLGATE, "serve"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_ready(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("tollgate serve did not become ready")


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    return output


def test_serve_on_embedded_defaults_prints_a_working_demo_key(tmp_path: Path) -> None:
    http_port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("TOLLGATE_")}
    env |= {"TOLLGATE_HTTP_ADDRESS": f"127.0.0.1:{http_port}", "TOLLGATE_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}"}
    url = f"http://127.0.0.1:{http_port}"

    first = _start(tmp_path, env)
    try:
        _wait_ready(url, first)
        with openai.OpenAI(base_url=f"{url}/v1", api_key="placeholder", max_retries=0) as probe:
            with pytest.raises(openai.AuthenticationError):
                probe.models.list()
    finally:
        output = _stop(first)
    keys = sorted(set(KEY.findall(output)))  # shown alone and inside the curl line
    assert len(keys) == 1, output
    assert "curl" in output and "TOLLGATE_ADMIN_TOKEN" in output
    assert (tmp_path / "tollgate.db").exists(), "SQLite in the working directory"

    second = _start(tmp_path, env)
    try:
        _wait_ready(url, second)
        with openai.OpenAI(base_url=f"{url}/v1", api_key=keys[0], max_retries=0) as client:
            reply = client.chat.completions.create(model="mock-chat", messages=[{"role": "user", "content": "Hello!"}])
            assert reply.choices[0].message.content
            assert {m.id for m in client.models.list()} == {"mock-chat", "mock-echo"}
    finally:
        output = _stop(second)
    assert not KEY.findall(output), "the demo key is printed once, on first start only"


def test_config_errors_stop_startup_with_one_line_each(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[models]]\nname = "m"\nroutes = [{ provider = "ghost" }]\ninput_price = 1\n')
    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "config error: models[0].routes[0].provider: unknown provider 'ghost'",
        "config error: models[0].output_price: is required (USD per 1M tokens)",
    ]


def _command_paths(group: click.Group, prefix: list[str]) -> list[list[str]]:
    paths = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            paths += _command_paths(command, [*prefix, name])
        else:
            paths.append([*prefix, name])
    return paths


@pytest.mark.parametrize("command", _command_paths(main, []), ids=lambda path: " ".join(path) or "tollgate")
def test_every_command_explains_itself_with_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and "tollgate" in result.output
