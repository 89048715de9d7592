"""API key format: generation, offline validation, hashing and redaction.

A key looks like ``sk-tg-<id>_<secret><checksum>``:

- ``sk-tg-`` — an OpenAI-style prefix (clients that check for ``sk-`` accept it)
  that also makes leaked keys easy to find;
- ``<id>`` — 12 base62 characters, the key's public id (safe to log and show);
- ``<secret>`` — 30 base62 characters from :mod:`secrets` (about 178 bits);
- ``<checksum>`` — CRC32 of everything before it, as 6 base62 characters.

The checksum is not a security measure: it lets the gateway turn away typos and
garbage before any database lookup, and keeps secret scanners' false positives
low (the GitHub token design). Only HMAC-SHA256(pepper, key) is ever stored.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import zlib
from typing import Any

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PREFIX = "sk-tg-"
ID_LENGTH = 12
SECRET_LENGTH = 30
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(PREFIX) + ID_LENGTH + 1 + SECRET_LENGTH + CHECKSUM_LENGTH

# The published pattern for secret scanners (gitleaks, trufflehog, grep) to find
# leaked Tollgate keys. Use it with word boundaries, e.g. for gitleaks:
#   regex = '''\bsk-tg-[0-9A-Za-z]{12}_[0-9A-Za-z]{36}\b'''
# A match whose last 6 characters are the base62 CRC32 of the rest is almost
# certainly a real key; revoke it with `tollgate admin keys revoke <id>`.
KEY_REGEX = r"sk-tg-[0-9A-Za-z]{12}_[0-9A-Za-z]{36}"

_SHA256_BLOCK = 64  # bytes: HMAC pads the key to the hash's block size
_KEY = re.compile(rf"sk-tg-(?P<id>[0-9A-Za-z]{{{ID_LENGTH}}})_[0-9A-Za-z]{{{SECRET_LENGTH + CHECKSUM_LENGTH}}}")


def random_base62(length: int) -> str:
    """A random base62 string from the OS CSPRNG, for ids and secrets."""
    return "".join(secrets.choice(BASE62) for _ in range(length))


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits))


# Every two-digit base62 string, by value: a 6-digit number is three of them (checked on every request).
_BASE62_PAIRS = tuple(high + low for high in BASE62 for low in BASE62)
_PAIR = len(_BASE62_PAIRS)


def checksum(body: str) -> str:
    """The 6-character base62 CRC32 of a key's body (everything before the checksum)."""
    # 62**6 > 2**32, so every CRC32 value fits in the fixed width: _base62(crc, 6), two digits at a time.
    rest, low = divmod(zlib.crc32(body.encode("ascii")), _PAIR)
    high, middle = divmod(rest, _PAIR)
    return _BASE62_PAIRS[high % _PAIR] + _BASE62_PAIRS[middle] + _BASE62_PAIRS[low]


def generate_key() -> tuple[str, str]:
    """A new key as (key_id, full_key); the full key is shown to its owner once."""
    key_id = random_base62(ID_LENGTH)
    body = f"{PREFIX}{key_id}_{random_base62(SECRET_LENGTH)}"
    return key_id, body + checksum(body)


def parse_key(text: str) -> str | None:
    """The key id of a well-formed key with a valid checksum, else None.

    Cheap and offline, so malformed keys never reach the database.
    """
    if len(text) != KEY_LENGTH:
        return None
    match = _KEY.fullmatch(text)
    if match is None:
        return None
    body, check = text[:-CHECKSUM_LENGTH], text[-CHECKSUM_LENGTH:]
    if checksum(body) != check:
        return None
    return match.group("id")


def hash_key(full_key: str, pepper: str) -> str:
    """The stored form of a key: hex HMAC-SHA256 keyed by the server pepper.

    With an empty pepper this is still a valid HMAC (empty key); keys carry
    enough entropy that a fast hash is safe, and the pepper means a leaked
    database alone cannot be used to check guesses offline.
    """
    inner, outer = _hmac_pads(pepper)
    # HMAC (RFC 2104) from the pepper's precomputed inner and outer states: copying two hash
    # states is much cheaper than setting up an HMAC context from the key on every request.
    digest = inner.copy()
    digest.update(full_key.encode("utf-8"))
    result = outer.copy()
    result.update(digest.digest())
    return result.hexdigest()


@functools.lru_cache(maxsize=8)
def _hmac_pads(pepper: str) -> tuple[Any, Any]:
    """SHA-256 states after the pepper's inner and outer HMAC pads (one pepper per server)."""
    key = pepper.encode("utf-8")
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_SHA256_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


def redact(full_key: str) -> str:
    """A recognisable, non-secret display form: ``sk-tg-<id>_...<last 4>``."""
    head = full_key[: len(PREFIX) + ID_LENGTH + 1]
    return f"{head}...{full_key[-4:]}"
