"""What can go wrong between the gateway and an upstream, below HTTP semantics: written down once.

The upstream HTTP client (http_client, http_connection, http_response) raises
only these. Messages are fixed phrases: never a URL, a host, a header or a key,
so nothing an exception carries can leak the operator's configuration.
`providers.http.transport_error` maps them to ProviderError kinds.
"""

from __future__ import annotations


class UpstreamTransportError(Exception):
    """Any failure to exchange bytes with an upstream (the base class)."""


class ConnectFailed(UpstreamTransportError):
    """No connection: DNS, refused, unreachable, or a TLS handshake or certificate refused."""


class ServerDisconnected(UpstreamTransportError):
    """The connection ended before a response began; on a reused keep-alive connection
    this is the server closing it as the request went out (routing may retry)."""


class ResponseBroken(UpstreamTransportError):
    """The connection ended, or was reset, in the middle of a response."""


class ProtocolViolation(UpstreamTransportError):
    """The upstream sent bytes that are not a valid HTTP/1.1 response."""


class InvalidRequest(UpstreamTransportError):
    """The request cannot be put on the wire (a header with CR/LF, a non-ASCII value); nothing was sent."""


class ClientClosed(UpstreamTransportError):
    """The client was closed (the server is stopping); nothing was sent."""


class UpstreamTimeout(UpstreamTransportError):
    """A phase of the exchange took too long (the base class of the timeouts)."""


class ConnectTimeout(UpstreamTimeout):
    """Opening the connection (TCP and TLS) took longer than the connect timeout."""


class WriteTimeout(UpstreamTimeout):
    """Sending the request made no progress for the write timeout."""


class ReadTimeout(UpstreamTimeout):
    """The upstream sent nothing for the read timeout while a response was awaited."""


class PoolTimeout(UpstreamTimeout):
    """Every allowed connection stayed busy for the pool timeout."""


class DeadlineExceeded(UpstreamTimeout):
    """The caller's total deadline passed during the exchange."""
