"""`buf lint` (STANDARD rules, from buf.yaml) is clean.

buf comes from npm (@bufbuild/buf); scripts/test installs it into .tools/.
This test fails, rather than skips, when buf is missing: lint is part of the suite.
"""

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _buf() -> str:
    local = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
    found = os.environ.get("TOLLGATE_BUF") or (str(local) if local.exists() else shutil.which("buf"))
    assert found, "buf is not installed: run scripts/test (it installs @bufbuild/buf into .tools/)"
    return found


def test_buf_lint_is_clean() -> None:
    result = subprocess.run([_buf(), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
