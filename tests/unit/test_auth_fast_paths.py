"""The auth path's shortcuts give what the long way gives: keys.checksum two base62 digits at a time,
bearer_token's plain `Bearer <token>` form without the regex."""

from __future__ import annotations

import random
import zlib

from gateway_core import keys


def test_checksum_is_the_crc32_in_six_base62_digits_at_every_edge() -> None:
    rng = random.Random(6)
    bodies = [f"{keys.PREFIX}{keys.random_base62(keys.ID_LENGTH)}_{keys.random_base62(keys.SECRET_LENGTH)}"
              for _ in range(2000)]
    bodies += ["", "a", "sk-tg-", "0" * 64] + ["".join(rng.choice("ab_-") for _ in range(n)) for n in range(60)]
    for body in bodies:
        expected = keys._base62(zlib.crc32(body.encode("ascii")), keys.CHECKSUM_LENGTH)
        assert keys.checksum(body) == expected, body


def test_the_largest_and_smallest_crc_values_fit() -> None:
    assert keys._base62(0, 6) == "000000"
    assert keys._base62(2**32 - 1, 6) == keys._BASE62_PAIRS[(2**32 - 1) // 62**4] + keys._base62((2**32 - 1) % 62**4, 4)


def test_a_generated_key_parses_and_one_changed_character_does_not() -> None:
    key_id, key = keys.generate_key()
    assert keys.parse_key(key) == key_id
    broken = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert keys.parse_key(broken) is None


def test_bearer_token_fast_form_and_the_regex_agree() -> None:
    from gateway_core.auth import _BEARER, bearer_token

    texts = ["Bearer sk-tg-abc", "Bearer  sk-tg-abc", "Bearer sk-tg-abc ", "Bearer ", "Bearer", "bearer x",
             "BEARER x", " Bearer x", "Bearer a b", "Bearer a\tb", "Bearer a\u2003b", "Bearer a\u00a0", "Bearer \u2003",
             "Basic x", "Bearer x\n", "Bearer ünïcode"]
    for text in texts:
        match = _BEARER.fullmatch(text)
        assert bearer_token([("authorization", text)]) == (match.group(1) if match else None), repr(text)
