"""Page sizes and opaque page tokens for every List call (AIP-158 style)."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from gateway_core.errors import GatewayError, invalid_request

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """The page size to use: 0 means the default, above the maximum means the maximum."""
    if requested < 0:
        raise invalid_request("page_size must not be negative", param="page_size")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def encode_token(*cursor: str | int) -> str:
    """An opaque token holding the sort key of the last item on a page."""
    raw = json.dumps(list(cursor), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, types: tuple[type, ...]) -> tuple[str | int, ...] | None:
    """The cursor in a token from encode_token (None for ""); rejects anything else."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        cursor = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _bad_token() from None
    if not isinstance(cursor, list) or len(cursor) != len(types):
        raise _bad_token()
    if not all(type(value) is kind for value, kind in zip(cursor, types, strict=True)):
        raise _bad_token()
    return tuple(cursor)


def _bad_token() -> GatewayError:
    return invalid_request("page_token is not a token from a previous response", param="page_token")


def cursor_time(text: str) -> datetime:
    """An aware datetime stored in a cursor by isoformat(); rejects anything else."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _bad_token() from None
    if value.tzinfo is None:
        raise _bad_token()
    return value
