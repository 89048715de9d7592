"""`tollgate serve` runs the facade with the hardened protocol and the `[http]` section's limits."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
from tests.process_support import TOLLGATE, free_port



def test_serve_applies_the_http_section(tmp_path: Path) -> None:
    http_port, grpc_port = free_port(), free_port()
    config = tmp_path / "tollgate.toml"
    config.write_text(f"""
[server]
http_address = "127.0.0.1:{http_port}"
grpc_address = "127.0.0.1:{grpc_port}"
[database]
url = "sqlite:///{tmp_path / 'tollgate.db'}"
[http]
max_body_bytes = 2000
header_timeout_seconds = 1
[[providers]]
name = "mock"
type = "mock"
[[models]]
name = "mock-chat"
routes = [{{ provider = "mock", model = "chat" }}]
input_price = 0.1
output_price = 0.4
""")
    process = subprocess.Popen([*TOLLGATE, "serve", "--config", str(config)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "tollgate serve did not start"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        too_large = httpx.post(f"{url}/v1/chat/completions", content=b"x" * 2001, timeout=10)
        assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "request_too_large"
        with socket.create_connection(("127.0.0.1", http_port)) as silent:
            silent.settimeout(10)
            start = time.monotonic()
            reply = silent.recv(65536)
            took = time.monotonic() - start
        assert reply.startswith(b"HTTP/1.1 408 ") and 0.9 <= took <= 5, (reply, took)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
