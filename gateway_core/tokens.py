"""Offline token estimates, for the mock provider and for upstreams that report no usage.

No tokenizer files, no downloads: a deterministic heuristic shaped like
OpenAI's BPE tokenizers (short words are one token, long ones about four
characters per token, digits in groups of three, each non-ASCII character
about one token, punctuation runs in pairs), with OpenAI's per-message
overhead on top. Time is linear in the input and capped: a text longer than
SAMPLE_THRESHOLD characters is estimated from evenly spaced windows, so a
pathological multi-megabyte string costs the same as a 64 KB one. Counts of
long texts are remembered by digest (see _cached_count).
"""

from __future__ import annotations

import hashlib
import math
import re

from gateway_core.pb.gateway.v1 import chat_pb2
from gateway_core.providers.base import ChatRequest

SAMPLE_THRESHOLD = 64 * 1024
SAMPLE_WINDOWS = 32
SAMPLE_WINDOW_CHARS = 2 * 1024

# OpenAI's chat format: every message costs a few tokens of framing, and the
# reply is primed with a few more (see OpenAI's "counting tokens" cookbook).
TOKENS_PER_MESSAGE = 4
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3
TOKENS_PER_TOOL_CALL = 3
TOKENS_PER_TOOL = 8
# Images are billed by size, which the gateway never fetches; these are
# OpenAI's "low" detail price and a 1024x1024 "high" detail image.
IMAGE_TOKENS_LOW = 85
IMAGE_TOKENS_DEFAULT = 765
# Compressed audio runs at roughly 16 KB/s and about 10 tokens/s.
AUDIO_BYTES_PER_TOKEN = 1600
FILE_BYTES_PER_TOKEN = 4

# ASCII texts at most this long are counted piece by piece (_count_short_ascii), longer ones by _count.
SHORT_ASCII_CHARS = 48
# Texts at least this long (and at most SAMPLE_THRESHOLD) have their counts remembered by digest.
CACHE_MIN_CHARS = 2 * 1024
CACHE_ENTRIES = 4096
_COUNTS: dict[bytes, int] = {}

_PIECES = re.compile(r"[A-Za-z]+|[0-9]+|[^\x00-\x7f]|[!-/:-@\[-`{-~]+|\s+")
# The kinds of piece _PIECES makes, one pattern each, for _count.
_WORDS = re.compile(r"[A-Za-z]+")
_LONG_WORDS = re.compile(r"[A-Za-z]{7,}")
_DIGITS = re.compile(r"[0-9]+")
_PUNCTUATION = re.compile(r"[!-/:-@\[-`{-~]+")
# Whitespace pieces that cost tokens: runs of 2+ that an ASCII whitespace character
# starts, and a lone ASCII whitespace character other than a space. (A non-ASCII
# whitespace character that starts a run is its own piece, counted as non-ASCII.)
# [\t-\r\x1c-\x20] is exactly the ASCII characters `\s` matches.
_COUNTED_SPACES = re.compile(r"[\t-\r\x1c-\x20]\s+|[\t-\r\x1c-\x1f]")


def estimate_text_tokens(text: str) -> int:
    """About how many tokens an OpenAI-style tokenizer makes of text."""
    if not text:  # most optional fields of a message are empty: no regex passes for them
        return 0
    if len(text) <= SAMPLE_THRESHOLD:
        if len(text) <= SHORT_ASCII_CHARS and text.isascii():
            return _count_short_ascii(text)
        if len(text) < CACHE_MIN_CHARS:
            return _count(text)
        return _cached_count(text)
    # Evenly spaced windows (not just a prefix), so a long text cannot hide
    # expensive content behind a cheap beginning.
    step = (len(text) - SAMPLE_WINDOW_CHARS) // (SAMPLE_WINDOWS - 1)
    sampled = sum(_count(text[i * step : i * step + SAMPLE_WINDOW_CHARS]) for i in range(SAMPLE_WINDOWS))
    return math.ceil(sampled * len(text) / (SAMPLE_WINDOWS * SAMPLE_WINDOW_CHARS))


def _cached_count(text: str) -> int:
    """_count of a long text, remembered by a digest of the text (never the text itself).

    Conversations resend their history on every turn, and system prompts repeat
    across requests: the same multi-kilobyte texts are counted again and again.
    The key is a 128-bit BLAKE2b digest, so no prompt is kept in memory and no
    one can make two texts share an entry; counting is deterministic, so a hit
    returns exactly what counting would. Texts over SAMPLE_THRESHOLD are not
    cached: hashing all of one would cost more than its sampled estimate.
    """
    key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    tokens = _COUNTS.get(key)
    if tokens is None:
        tokens = _count(text)
        if len(_COUNTS) >= CACHE_ENTRIES:
            _COUNTS.pop(next(iter(_COUNTS)), None)  # the oldest entry (dicts keep insertion order)
        _COUNTS[key] = tokens
    return tokens


def _count_short_ascii(text: str) -> int:
    """_count of a short ASCII text, piece by piece: one regex pass and a loop over a handful of
    pieces cost about half of _count's five passes (a chat's many short messages: "Thanks!")."""
    tokens = 0
    for piece in _PIECES.findall(text):
        first, size = piece[0], len(piece)
        if first.isalpha():  # ASCII here, as in _count: a word of up to 6 letters is one token
            tokens += 1 if size <= 6 else (size + 3) // 4
        elif first.isdigit():
            tokens += (size + 2) // 3
        elif first.isspace():
            if piece != " ":
                tokens += (size + 7) // 8
        else:  # a punctuation run
            tokens += (size + 1) // 2
    return tokens


def _count(text: str) -> int:
    """Tokens of text, piece by piece as _PIECES splits it, counted with one regex per kind of piece.

    The same result as looping over _PIECES.finditer (tests/unit/test_tokens.py
    checks the two agree on arbitrary text), in 50-75 % of the time: a 32 KB
    prompt has thousands of pieces, and a Python loop over all of them was the
    largest CPU cost of such a request (py-spy, bench/scaling.py). Only pieces
    whose count is not fixed (long words, numbers, punctuation, whitespace
    other than one space) are looped over.
    """
    # Letters: a word of up to 6 letters is one token, a longer one (n + 3) // 4.
    # (Each sum only when its list has something: most short texts have no digits or spaced runs.)
    long_words = _LONG_WORDS.findall(text)
    tokens = len(_WORDS.findall(text))
    if long_words:
        tokens += sum((len(w) + 3) // 4 for w in long_words) - len(long_words)
    digits = _DIGITS.findall(text)
    if digits:
        tokens += sum((len(d) + 2) // 3 for d in digits)
    punctuation = _PUNCTUATION.findall(text)
    if punctuation:
        tokens += sum((len(p) + 1) // 2 for p in punctuation)
    # A single space belongs to the next word's token; other runs (newlines,
    # indentation) are about one token per 8 characters.
    spaces = _COUNTED_SPACES.findall(text)
    if spaces:
        tokens += sum((len(run) + 7) // 8 for run in spaces)
    if not text.isascii():
        # Each non-ASCII character is a token, except inside a whitespace run
        # that an ASCII whitespace character started (_PIECES's `\s+`).
        non_ascii = len(text) - len(text.encode("ascii", "ignore"))
        in_spaces = sum(len(run) - len(run.encode("ascii", "ignore")) for run in spaces)
        tokens += non_ascii - in_spaces
    return tokens


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """About how many input tokens a chat request costs: messages, tools and formats."""
    total = TOKENS_REPLY_PRIMING
    for message in request.messages:
        total += TOKENS_PER_MESSAGE + _message_tokens(message)
    if request.tools:  # iterating an empty repeated field still costs an iterator: most requests have none
        for tool in request.tools:
            total += TOKENS_PER_TOOL + _tool_tokens(tool)
    if request.HasField("response_format"):
        schema = request.response_format.json_schema
        total += sum(estimate_text_tokens(text) for text in (schema.name, schema.description, schema.schema_json))
    return total


def _message_tokens(message: chat_pb2.Message) -> int:
    tokens = estimate_text_tokens(message.content) if message.HasField("content") else 0
    if message.parts:
        tokens += sum(_part_tokens(part) for part in message.parts)
    if message.name:
        tokens += TOKENS_PER_NAME + estimate_text_tokens(message.name)
    if message.tool_calls:  # as for tools: no iterator over an empty repeated field
        for call in message.tool_calls:
            tokens += TOKENS_PER_TOOL_CALL + estimate_text_tokens(
                f"{call.id} {call.function.name} {call.function.arguments}"
            )
    # Most messages have none of these three: no call for an empty one (estimate_text_tokens("") is 0).
    if tool_call_id := message.tool_call_id:
        tokens += estimate_text_tokens(tool_call_id)
    if refusal := message.refusal:
        tokens += estimate_text_tokens(refusal)
    if extra_json := message.extra_json:
        tokens += estimate_text_tokens(extra_json)
    return tokens


def _part_tokens(part: chat_pb2.ContentPart) -> int:
    kind = part.WhichOneof("part")
    if kind == "image_url":
        return IMAGE_TOKENS_LOW if part.image_url.detail == "low" else IMAGE_TOKENS_DEFAULT
    if kind == "input_audio":
        return 1 + len(part.input_audio.data) * 3 // 4 // AUDIO_BYTES_PER_TOKEN
    if kind == "file":
        return 1 + len(part.file.file_data) * 3 // 4 // FILE_BYTES_PER_TOKEN + estimate_text_tokens(part.file.filename)
    if kind in ("text", "refusal", "raw_json"):
        return estimate_text_tokens(getattr(part, kind))
    return 0


def _tool_tokens(tool: chat_pb2.Tool) -> int:
    function = tool.function
    texts = (function.name, function.description, function.parameters_json, tool.raw_json)
    return sum(estimate_text_tokens(text) for text in texts)
