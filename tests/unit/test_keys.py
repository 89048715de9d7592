"""API key format: generation, checksum, parsing, hashing, redaction."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import zlib

import pytest

from gateway_core import keys


def test_generated_key_has_the_documented_shape() -> None:
    key_id, full = keys.generate_key()
    assert full.startswith("sk-tg-")
    assert re.fullmatch(keys.KEY_REGEX, full)
    assert len(full) == keys.KEY_LENGTH == 6 + 12 + 1 + 30 + 6
    assert full[6:18] == key_id
    assert re.fullmatch(r"[0-9A-Za-z]{12}", key_id)


def test_secret_part_carries_at_least_160_bits() -> None:
    assert keys.SECRET_LENGTH * math.log2(62) >= 160


def test_keys_are_unique() -> None:
    generated = {keys.generate_key()[1] for _ in range(2000)}
    assert len(generated) == 2000


def test_checksum_is_crc32_of_the_body_in_six_base62_chars() -> None:
    _, full = keys.generate_key()
    body, check = full[:-6], full[-6:]
    assert keys.checksum(body) == check
    value = 0
    for char in check:
        value = value * 62 + keys.BASE62.index(char)
    assert value == zlib.crc32(body.encode())


def test_parse_key_returns_the_id_of_a_valid_key() -> None:
    key_id, full = keys.generate_key()
    assert keys.parse_key(full) == key_id


@pytest.mark.parametrize(
    "mutate",
    [
        lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # checksum typo
        lambda k: k[:20] + ("x" if k[20] != "x" else "y") + k[21:],  # secret typo
        lambda k: k[:-1],  # too short
        lambda k: k + "A",  # too long
        lambda k: "sk-xx-" + k[6:],  # wrong prefix
        lambda k: k.replace("_", "-", 1),  # wrong separator
        lambda k: k[:10] + "!" + k[11:],  # not base62
        lambda k: " " + k[1:],
        lambda k: "",
        lambda k: "Bearer " + k,
    ],
)
def test_parse_key_rejects_malformed_keys(mutate: object) -> None:
    _, full = keys.generate_key()
    assert keys.parse_key(mutate(full)) is None  # type: ignore[operator]


def test_published_regex_finds_keys_in_text() -> None:
    _, full = keys.generate_key()
    text = f'OPENAI_API_KEY="{full}"\nother=sk-tg-short_abc'
    assert re.findall(rf"\b{keys.KEY_REGEX}\b", text) == [full]


def test_hash_key_is_hex_hmac_sha256_with_the_pepper() -> None:
    _, full = keys.generate_key()
    expected = hmac.new(b"pepper", full.encode(), hashlib.sha256).hexdigest()
    assert keys.hash_key(full, "pepper") == expected
    assert re.fullmatch(r"[0-9a-f]{64}", expected)
    assert keys.hash_key(full, "other") != expected


def test_hash_key_works_with_an_empty_pepper() -> None:
    _, full = keys.generate_key()
    assert keys.hash_key(full, "") == hmac.new(b"", full.encode(), hashlib.sha256).hexdigest()


def test_redact_shows_id_and_last_four_only() -> None:
    key_id, full = keys.generate_key()
    shown = keys.redact(full)
    assert shown == f"sk-tg-{key_id}_...{full[-4:]}"
    assert full[19:-4] not in shown
