"""Server-sent events for streamed completions: the wire constants and the core call's type.

The writing itself is event_stream.stream_chat: a failure after the 200 becomes
an in-band `data: {"error": ...}` event, a silent core gets `: ping` comments,
and a client disconnect cancels the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import grpc

from gateway_core.pb.gateway.v1 import chat_pb2 as pb

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"
SSE_HEADERS: Mapping[str, str] = {"cache-control": "no-cache", "x-accel-buffering": "no"}

StreamCall: TypeAlias = grpc.aio.UnaryStreamCall[
    pb.StreamChatCompletionRequest, pb.StreamChatCompletionResponse
]
