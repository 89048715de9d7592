"""Tool-call ids that carry Gemini thought signatures through OpenAI clients. Pure.

Gemini 3 puts an opaque `thoughtSignature` on function-call parts and rejects
the next turn (400 "Function call is missing a thought_signature") unless the
signature comes back on the same part. OpenAI clients keep nothing of a tool
call but its id, name and arguments, and they send the id back verbatim in the
assistant message of the next turn; so the signature travels inside the id the
gateway makes up, and the gateway stays stateless:

    call_<24 alphanumerics>                  a call without a signature
    call_<24 alphanumerics>_ts_<base64url>   its signature's bytes, URL-safe base64, unpadded

Every character is in [A-Za-z0-9_-], which every provider the gateway speaks
accepts as a tool-call id (Anthropic insists on it), so a conversation can move
between providers. The fixed-length nonce keeps the format unambiguous: an id
of any other shape (OpenAI's `call_...`, Anthropic's `toolu_...`) simply has no
signature. Signatures are usually a few hundred bytes (the SDK treats ids as
opaque strings of any length); Gemini only sends one on the first call of each
step, so parallel calls after the first get short ids.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import string

NONCE_CHARS = 24
_ALPHABET = string.ascii_letters + string.digits
_SIGNED = re.compile(r"call_[A-Za-z0-9]{24}_ts_([A-Za-z0-9_-]+)")


def new_call_id(signature: str | None = None) -> str:
    """A fresh tool-call id, carrying `signature` (Gemini's base64 text) when given.

    A signature that is not base64 (which Gemini's JSON never sends) cannot be
    carried byte for byte, so it is left out rather than mangled.
    """
    call_id = "call_" + "".join(secrets.choice(_ALPHABET) for _ in range(NONCE_CHARS))
    if not signature:
        return call_id
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return call_id
    return f"{call_id}_ts_{base64.urlsafe_b64encode(raw).decode().rstrip('=')}"


def signature_of(call_id: str) -> str | None:
    """The thought signature a gateway-made id carries, as Gemini's base64 text; None if it has none.

    The bytes are exactly those Gemini sent; the text is canonical base64,
    which is what Gemini's JSON uses.
    """
    match = _SIGNED.fullmatch(call_id)
    if match is None:
        return None
    encoded = match.group(1)
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        return None
    return base64.b64encode(raw).decode()
