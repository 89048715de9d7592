"""The whole-run secret check: every log record of the test session goes to one file, and at the
end the file must contain none of the API keys minted and none of the provider keys configured.

Keys are collected where they come into being (keys.generate_key, ProviderSettings), not where
tests happen to use them, so a new test that mints or configures a key is covered without a
change here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway_core import keys
from gateway_core.config_model import ProviderSettings
from gateway_core.observability import redaction
from gateway_core.observability.log_format import JsonFormatter

# Shorter values (e.g. "k") would match ordinary log text; the redactor masks such keys by shape.
MIN_SECRET_LENGTH = 5


class SecretWatch:
    """Collects secrets as they are created and routes every log record to a file."""

    def __init__(self, log_file: Path) -> None:
        self.log_file = log_file
        self.secrets: set[str] = set()
        self._handler = logging.FileHandler(log_file, encoding="utf-8")
        self._restore: list[tuple[Any, str, Any]] = []

    def start(self) -> None:
        redactor = redaction.install()
        self._handler.setFormatter(JsonFormatter(redactor))
        self._handler.setLevel(logging.DEBUG)
        root = logging.getLogger()
        root.addHandler(self._handler)
        # INFO everywhere, DEBUG for the gateway: the access log and every operator message count.
        root.setLevel(logging.INFO)
        logging.getLogger("tollgate").setLevel(logging.DEBUG)
        self._wrap(keys, "generate_key", self._minted)
        self._wrap(ProviderSettings, "__init__", self._configured)

    def stop(self) -> None:
        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)
        logging.getLogger().removeHandler(self._handler)
        self._handler.close()

    def leaks(self) -> list[str]:
        """The collected secrets found in the log file."""
        return find_leaks(self.log_file.read_text(encoding="utf-8", errors="replace"), self.secrets)

    def _wrap(self, owner: Any, name: str, after: Any) -> None:
        original = getattr(owner, name)
        self._restore.append((owner, name, original))

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            after(args, result)
            return result

        setattr(owner, name, wrapper)

    def _minted(self, args: tuple[Any, ...], result: tuple[str, str]) -> None:
        self.secrets.add(result[1])

    def _configured(self, args: tuple[Any, ...], result: None) -> None:
        api_key = args[0].api_key
        if api_key:
            self.secrets.add(api_key)


def find_leaks(text: str, secrets: Iterable[str]) -> list[str]:
    """The secrets (long enough to be meaningful) that occur in text, sorted."""
    return sorted(s for s in set(secrets) if len(s) >= MIN_SECRET_LENGTH and s in text)
