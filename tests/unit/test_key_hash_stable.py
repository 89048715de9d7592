"""The stored key hash never changes form: keys hashed by earlier versions still authenticate."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from gateway_core.keys import generate_key, hash_key


@pytest.mark.parametrize("pepper", ["", "test-pepper", "pëpper-with-ünicode" * 4])
def test_hash_key_is_hex_hmac_sha256_of_the_key_under_the_pepper(pepper: str) -> None:
    _, key = generate_key()
    expected = hmac.new(pepper.encode("utf-8"), key.encode("utf-8"), hashlib.sha256).hexdigest()
    assert hash_key(key, pepper) == expected


def test_a_known_vector() -> None:
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    assert hash_key("what do ya want for nothing?", "Jefe") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
