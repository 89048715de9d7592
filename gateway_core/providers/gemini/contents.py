"""gateway.v1 messages -> Gemini `systemInstruction` parts and `contents`. Pure.

    system / developer   systemInstruction text parts, in order (their position is lost)
    user                 role "user": text; inlineData for data-URL images, input_audio and
                         inline files; fileData for http(s) image URLs
    assistant            role "model": text (or the refusal), then one functionCall part per
                         tool call, with the thoughtSignature its id carries (see call_ids);
                         reasoning_content is not sent back (the signatures carry the thinking)
    tool                 role "user": functionResponse {name, response}; the name is the
                         one of the assistant tool call with that id (Gemini matches
                         responses by name and order, not by id), the response the
                         result itself if it is a JSON object, else {"output": <text>}

Consecutive contents of one role are merged, so the answers to one model turn
travel in one user content as Gemini requires, and empty texts (which Gemini
rejects) are left out. Image URLs are passed by reference, never fetched by the
gateway; their MIME type comes from the file extension (Gemini requires one),
image/jpeg when the extension says nothing.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from gateway_core.errors import GatewayError, Reason, invalid_request
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.gemini.call_ids import signature_of
from gateway_core.providers.openai.request import loads_exact

Part = dict[str, Any]
Content = dict[str, Any]

DEFAULT_IMAGE_MIME = "image/jpeg"
_IMAGE_MIMES: Mapping[str, str] = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
    ".gif": "image/gif", ".heic": "image/heic", ".heif": "image/heif",
}
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)(?:;[^,;]*)*;base64,(.*)", re.DOTALL)
_SYSTEM_ROLES = frozenset({types_pb2.ROLE_SYSTEM, types_pb2.ROLE_DEVELOPER})


def to_contents(messages: Iterable[chat_pb2.Message]) -> tuple[list[Part], list[Content]]:
    """The systemInstruction parts and the contents for a conversation."""
    system: list[Part] = []
    contents: list[Content] = []
    call_names: dict[str, str] = {}  # tool_call_id -> function name, for the tool messages that follow
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.role in _SYSTEM_ROLES:
            system.extend(_text_parts(_plain_text(message, where)))
        elif message.role == types_pb2.ROLE_USER:
            _append(contents, "user", _user_parts(message, where))
        elif message.role == types_pb2.ROLE_ASSISTANT:
            _append(contents, "model", _model_parts(message, where, call_names))
        elif message.role == types_pb2.ROLE_TOOL:
            _append(contents, "user", [_function_response(message, where, call_names)])
        else:
            raise invalid_request("message role is missing or unknown", param=f"{where}.role")
    return system, contents


def _append(contents: list[Content], role: str, parts: list[Part]) -> None:
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _text_parts(text: str) -> list[Part]:
    return [{"text": text}] if text else []


def _plain_text(message: chat_pb2.Message, where: str) -> str:
    """The text of a message that may only hold text (system, developer, tool)."""
    if not message.parts:
        return message.content
    texts = []
    for j, part in enumerate(message.parts):
        if part.WhichOneof("part") != "text":
            raise invalid_request("only text content is allowed in this message", param=f"{where}.content[{j}]")
        texts.append(part.text)
    return "".join(texts)


def _user_parts(message: chat_pb2.Message, where: str) -> list[Part]:
    if not message.parts:
        return _text_parts(message.content)
    parts: list[Part] = []
    for j, part in enumerate(message.parts):
        parts.extend(_user_part(part, f"{where}.content[{j}]"))
    return parts


def _user_part(part: chat_pb2.ContentPart, where: str) -> list[Part]:
    kind = part.WhichOneof("part")
    if kind == "text":
        return _text_parts(part.text)
    if kind == "refusal":
        return _text_parts(part.refusal)
    if kind == "image_url":
        return [_image(part.image_url.url, f"{where}.image_url.url")]
    if kind == "input_audio":
        audio = part.input_audio
        return [{"inlineData": {"mimeType": f"audio/{audio.format or 'wav'}", "data": audio.data}}]
    if kind == "file":
        if not part.file.file_data:
            raise GatewayError(Reason.UNSUPPORTED_PARAMETER, "file ids are not supported by Gemini models; "
                               "send the file inline as file_data", param=f"{where}.file.file_id")
        return [_inline(part.file.file_data, f"{where}.file.file_data")]
    if kind == "raw_json":
        raise GatewayError(Reason.UNSUPPORTED_PARAMETER, "this content part type is not supported by Gemini models",
                           param=where)
    raise invalid_request("content part is empty", param=where)


def _image(url: str, where: str) -> Part:
    if url.startswith("data:"):
        return _inline(url, where)
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("https", "http"):
        raise invalid_request("image URLs must be http(s) or base64 data URLs", param=where)
    extension = posixpath.splitext(urlsplit(url).path)[1].lower()
    return {"fileData": {"mimeType": _IMAGE_MIMES.get(extension, DEFAULT_IMAGE_MIME), "fileUri": url}}


def _inline(data_url: str, where: str) -> Part:
    match = _DATA_URL.fullmatch(data_url)
    if match is None or not match.group(2):
        raise invalid_request("must be a base64 data URL (data:<mime>;base64,<data>)", param=where)
    return {"inlineData": {"mimeType": match.group(1).lower(), "data": match.group(2)}}


def _model_parts(message: chat_pb2.Message, where: str, call_names: dict[str, str]) -> list[Part]:
    if message.parts:
        text = "".join(p.text or p.refusal for p in message.parts if p.WhichOneof("part") in ("text", "refusal"))
    else:
        text = message.content or message.refusal
    parts = _text_parts(text)
    for j, call in enumerate(message.tool_calls):
        param = f"{where}.tool_calls[{j}].function.arguments"
        arguments = loads_exact(call.function.arguments, param) if call.function.arguments.strip() else {}
        if not isinstance(arguments, dict):
            raise invalid_request("tool call arguments must be a JSON object", param=param)
        part: Part = {"functionCall": {"name": call.function.name, "args": arguments}}
        signature = signature_of(call.id)
        if signature is not None:
            part["thoughtSignature"] = signature
        parts.append(part)
        call_names[call.id] = call.function.name
    return parts


def _function_response(message: chat_pb2.Message, where: str, call_names: Mapping[str, str]) -> Part:
    name = call_names.get(message.tool_call_id) or message.name
    if not name:
        raise invalid_request("tool_call_id does not match a tool call of an earlier assistant message",
                              param=f"{where}.tool_call_id")
    text = _plain_text(message, where)
    return {"functionResponse": {"name": name, "response": _response_object(text)}}


def _response_object(text: str) -> dict[str, Any]:
    """A tool's result as Gemini's response object: itself if it is a JSON object, else under "output"."""
    try:
        value = loads_exact(text, "") if text.lstrip().startswith("{") else None
    except GatewayError:
        value = None
    return value if isinstance(value, dict) else {"output": text}
