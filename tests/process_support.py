"""For tests that run `tollgate` as a real subprocess: free ports, the command line, readiness."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

# The installed console script may belong to another checkout; this runs the code under test.
TOLLGATE = [sys.executable, "-c", "from gateway_core.cli import main; main()"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, processes: Sequence[subprocess.Popen[Any]], *, timeout: float = 30.0) -> None:
    """Waits until url's /readyz answers 200; fails at once if one of processes has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            assert process.poll() is None, f"{process.args} exited with {process.returncode}"
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} did not become ready")


def start_serve(config: Path, http_port: int) -> subprocess.Popen[bytes]:
    """`tollgate serve --config config` with its output discarded, returned once ready (killed if never)."""
    process = subprocess.Popen(
        [*TOLLGATE, "serve", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(f"http://127.0.0.1:{http_port}", [process])
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        raise
    return process
