"""What every provider adapter is: the contract between the chat servicer and upstreams.

A provider turns one gateway.v1 chat request into an upstream call and the
upstream's answer back into gateway.v1 messages. It never sees the caller's key,
prices or the store; it never logs request bodies. Provider failures are
ProviderErrors built by the provider's own `map_error`, with client-safe
messages only (no upstream text that could carry the operator's key or URL).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from gateway_core.errors import GatewayError, Reason
from gateway_core.pb.gateway.v1 import chat_pb2

# Both request messages have the same fields, number for number; code that reads
# a request accepts either.
ChatRequest = chat_pb2.CreateChatCompletionRequest | chat_pb2.StreamChatCompletionRequest


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a setattr call per field (twice per request)
class UpstreamCall:
    """One call to make upstream, as decided by the servicer. Never changed (dataclasses.replace makes another)."""

    request: ChatRequest
    # The provider's own model id (the route's `model`).
    upstream_model: str
    # The model id the client asked for; responses echo it.
    client_model: str
    # The gateway's request id, for upstream correlation headers and logs.
    request_id: str
    # Seconds left before the caller's deadline, if it has one.
    timeout_seconds: float | None = None
    # Client headers allowed through to the upstream (W3C trace context only),
    # lower-case names; every other upstream header is built by the provider.
    forward_headers: tuple[tuple[str, str], ...] = ()


class ProviderError(GatewayError):
    """An upstream failure, already mapped to the gateway vocabulary.

    upstream_status and upstream_body are for operator logs only: never
    returned to clients. quota_exhausted marks the operator's own upstream
    quota or credit running out (not the caller's balance): routing cools that
    route down for long and clients see a rate-limit-style error.
    """

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        upstream_status: int | None = None,
        upstream_body: str = "",
        param: str | None = None,
        retry_after_seconds: float | None = None,
        quota_exhausted: bool = False,
    ) -> None:
        super().__init__(reason, message, param=param, retry_after_seconds=retry_after_seconds)
        self.upstream_status = upstream_status
        self.upstream_body = upstream_body[:2048]
        self.quota_exhausted = quota_exhausted


class Provider(Protocol):
    """A configured upstream. One instance per [[providers]] entry; safe to share."""

    name: str

    async def complete(self, call: UpstreamCall) -> chat_pb2.CreateChatCompletionResponse:
        """The whole completion. Its usage is the provider's, if it reported one."""
        ...

    def stream(self, call: UpstreamCall) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        """Chunks as they arrive. If the upstream reported usage, the last chunk
        has no choices and carries it. Closing the iterator early (aclose, or
        cancellation) closes the upstream connection. The iterator may also offer
        next_batch() (providers/chunk_batches.py): the chunks of one network read together."""
        ...

    async def aclose(self) -> None:
        """Releases what the provider holds (not the shared HTTP client)."""
        ...


def malformed(detail: str) -> ProviderError:
    """The error for an upstream answer that breaks its own format; detail is for logs only."""
    return ProviderError(Reason.UPSTREAM_ERROR, "upstream sent a malformed response", upstream_body=detail)
