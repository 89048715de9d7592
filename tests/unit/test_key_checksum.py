"""keys.checksum (two base62 digits at a time) is the 6-digit base62 CRC32 the key format defines."""

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
