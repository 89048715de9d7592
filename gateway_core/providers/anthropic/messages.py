"""gateway.v1 conversation -> Anthropic `system` blocks and `messages`. Pure: no I/O, no logging.

Anthropic has no system role, no tool role and no two turns of one role in a
row. So system and developer messages, wherever they stand, become top-level
`system` text blocks in order; a run of tool messages becomes one user turn of
tool_result blocks; and neighbouring turns of one role are merged. Content is
always sent as a list of blocks, which makes merging a concatenation.
Images are passed on by reference or inline, never fetched by the gateway.
"""

from __future__ import annotations

from typing import Any

from gateway_core.errors import GatewayError, Reason, invalid_request
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import ChatRequest
from gateway_core.providers.openai.request import loads_exact

# What Anthropic accepts inline [anthropic-sdk-python types/base64_image_source_param.py,
# base64_pdf_source_param.py].
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
DOCUMENT_TYPES = frozenset({"application/pdf"})
# A common misspelling that means exactly image/jpeg.
_MEDIA_TYPE_ALIASES = {"image/jpg": "image/jpeg"}
_SYSTEM_ROLES = frozenset({types_pb2.ROLE_SYSTEM, types_pb2.ROLE_DEVELOPER})

Block = dict[str, Any]
Turn = dict[str, Any]


def unsupported(what: str, param: str) -> GatewayError:
    """The 400 for something the client may send to OpenAI but Anthropic cannot take."""
    return GatewayError(Reason.UNSUPPORTED_PARAMETER, f"{what} is not supported for Anthropic models", param=param)


def to_system_and_messages(request: ChatRequest) -> tuple[list[Block], list[Turn]]:
    """The top-level `system` blocks and the role-alternating `messages` of a request."""
    system: list[Block] = []
    turns: list[Turn] = []
    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        if message.role in _SYSTEM_ROLES:
            system.extend(_system_blocks(message, where))
            continue
        role, blocks = _turn(message, where)
        if not blocks:
            continue  # Anthropic rejects empty turns; an empty message says nothing anyway
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise invalid_request("messages must include a non-empty user or assistant message", "messages")
    return system, turns


def _turn(message: chat_pb2.Message, where: str) -> tuple[str, list[Block]]:
    if message.role == types_pb2.ROLE_USER:
        return "user", _user_blocks(message, where)
    if message.role == types_pb2.ROLE_ASSISTANT:
        return "assistant", _assistant_blocks(message, where)
    if message.role == types_pb2.ROLE_TOOL:
        return "user", [_tool_result(message, where)]
    raise invalid_request("message role is missing or unknown", param=f"{where}.role")


def _system_blocks(message: chat_pb2.Message, where: str) -> list[Block]:
    if not message.parts:
        return _text(message.content)
    blocks: list[Block] = []
    for j, part in enumerate(message.parts):
        if part.WhichOneof("part") != "text":
            raise invalid_request("system and developer messages may only contain text", f"{where}.content[{j}]")
        blocks.extend(_text(part.text))
    return blocks


def _user_blocks(message: chat_pb2.Message, where: str) -> list[Block]:
    if not message.parts:
        return _text(message.content)
    blocks: list[Block] = []
    for j, part in enumerate(message.parts):
        blocks.extend(_part(part, f"{where}.content[{j}]"))
    return blocks


def _assistant_blocks(message: chat_pb2.Message, where: str) -> list[Block]:
    blocks: list[Block] = []
    for j, part in enumerate(message.parts):
        kind = part.WhichOneof("part")
        if kind not in ("text", "refusal"):
            raise unsupported(f"assistant content of type {kind!r}", f"{where}.content[{j}]")
        blocks.extend(_text(part.text if kind == "text" else part.refusal))
    if not message.parts:
        blocks.extend(_text(message.content))
    if not blocks and message.HasField("refusal"):
        blocks.extend(_text(message.refusal))  # what the assistant said, when it said nothing else
    for k, call in enumerate(message.tool_calls):
        arguments = _arguments(call.function.arguments, f"{where}.tool_calls[{k}].function.arguments")
        blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments})
    return blocks


def _tool_result(message: chat_pb2.Message, where: str) -> Block:
    block: Block = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    if message.parts:
        content = [b for j, part in enumerate(message.parts) for b in _part(part, f"{where}.content[{j}]")]
        if content:
            block["content"] = content
    elif message.content:
        block["content"] = message.content
    return block


def _part(part: chat_pb2.ContentPart, where: str) -> list[Block]:
    kind = part.WhichOneof("part")
    if kind == "text":
        return _text(part.text)
    if kind == "refusal":
        return _text(part.refusal)
    if kind == "image_url":
        return [_image(part.image_url.url, f"{where}.image_url.url")]
    if kind == "file":
        return [_file(part.file, f"{where}.file")]
    if kind == "input_audio":
        raise unsupported("audio input", where)
    if kind == "raw_json":
        raise unsupported("this content part type", where)
    raise invalid_request("content part is empty", param=where)


def _text(text: str) -> list[Block]:
    # Anthropic rejects empty text blocks; an empty string adds nothing.
    return [{"type": "text", "text": text}] if text else []


def _image(url: str, param: str) -> Block:
    if url.startswith("data:"):
        media_type, data = _data_url(url, param)
        if media_type in IMAGE_TYPES:
            return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
        if media_type in DOCUMENT_TYPES:
            return {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}
        raise invalid_request(
            f"image type {media_type[:64]!r} is not supported; use JPEG, PNG, GIF, WebP or PDF", param
        )
    if url.lower().startswith(("https://", "http://")):
        # Anthropic fetches it; the gateway never does (no SSRF from here).
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise invalid_request("an image must be an http(s) URL or a base64 data URL", param)


def _file(file: chat_pb2.FileInput, param: str) -> Block:
    if file.file_id:
        raise unsupported("files by id (OpenAI file ids)", f"{param}.file_id")
    media_type, data = _data_url(file.file_data, f"{param}.file_data")
    if media_type not in DOCUMENT_TYPES:
        raise invalid_request(f"file type {media_type[:64]!r} is not supported; use PDF", f"{param}.file_data")
    block: Block = {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if file.filename:
        block["title"] = file.filename
    return block


def _data_url(url: str, param: str) -> tuple[str, str]:
    """(media type, base64 data) of a `data:<type>[;params];base64,<data>` URL."""
    header, comma, data = url.removeprefix("data:").partition(",")
    fields = header.split(";")
    if not url.startswith("data:") or not comma or fields[-1].strip().lower() != "base64" or not data:
        raise invalid_request("must be a base64 data URL (data:<type>;base64,<data>)", param)
    media_type = fields[0].strip().lower()
    return _MEDIA_TYPE_ALIASES.get(media_type, media_type), data


def _arguments(text: str, param: str) -> Any:
    """A tool call's arguments as the JSON object Anthropic wants as `input`.

    Empty arguments mean a call without arguments: some models stream none
    for a function that takes no parameters, and clients send that back.
    """
    if not text.strip():
        return {}
    value = loads_exact(text, param)
    if not isinstance(value, dict):
        raise invalid_request("tool call arguments must be a JSON object", param)
    return value
