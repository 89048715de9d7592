"""The whole-run log check really fails a run whose logs contain an issued key (and only then)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_TEST = '''
import logging
from gateway_core import keys
from gateway_core.observability.redaction import Redactor

def test_mints_a_key(monkeypatch):
    _, secret = keys.generate_key()
    if {leak}:  # redaction regressed: every value passes through untouched
        monkeypatch.setattr(Redactor, "redact", lambda self, text, **options: text)
        monkeypatch.setattr(Redactor, "redact_value", lambda self, name, value: value)
        monkeypatch.setattr(Redactor, "mask_names", lambda self, name, value: value)
    logging.getLogger("tollgate.test").warning("verified key %s", secret)
'''


@pytest.mark.parametrize("leak", [True, False])
def test_a_run_that_logs_an_issued_key_fails(tmp_path: Path, leak: bool) -> None:
    (tmp_path / "test_leak.py").write_text(_TEST.format(leak=leak))
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(tmp_path / "test_leak.py")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert "1 passed" in run.stdout, run.stdout + run.stderr
    if leak:
        assert run.returncode == 1 and "SECRET LEAK: 1 issued or configured key(s)" in run.stdout
    else:
        # The line was written (redacted), so "none" means checked, not empty.
        assert run.returncode == 0 and re.search(r"none in [1-9][0-9]* bytes", run.stdout), run.stdout
