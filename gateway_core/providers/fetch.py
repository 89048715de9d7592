"""A hardened fetcher for images that a provider needs inline (bytes), not as a URL.

By default an image_url goes to the provider unchanged. Only a provider that
cannot take URLs fetches, and then only through here, because the URL is the
client's and the connection is the gateway's (OWASP API7, SSRF; one-api#2387):

- https only (http only with allow_insecure, for tests), allow-listed ports;
- the host is resolved once, and every address it resolves to must be public:
  loopback, RFC 1918, link-local (cloud metadata at 169.254.169.254), CGNAT,
  unique-local, multicast, unspecified and reserved ranges are refused, also
  when embedded in IPv6 (IPv4-mapped, -compatible, NAT64, 6to4); IPv4 written
  in decimal, hex or octal (`0x7f000001`, `2130706433`, `0177.1`) is refused;
- the connection goes to that pinned address, with the original name in the
  Host header and TLS SNI (and certificate check), so a second DNS answer
  (rebinding) is never consulted;
- redirects are refused, not followed; the content type must be image/*;
  the size is capped while the body streams in, and the whole fetch is timed.

Every refusal is the same client-facing GatewayError (INVALID_REQUEST, param
"image_url"), so a caller cannot map the internal network by the messages;
the reason is kept on the error for operator logs only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from gateway_core.errors import GatewayError, Reason
from gateway_core.providers.http import user_agent

MAX_IMAGE_BYTES = 20 * 1024 * 1024
FETCH_TIMEOUT_SECONDS = 10.0
DEFAULT_PORTS = (443,)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses it resolves to (textual).
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_FORBIDDEN_V4 = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8",        # "this network", including the unspecified address
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # private (RFC 1918)
    "100.64.0.0/10",    # carrier-grade NAT (RFC 6598)
    "127.0.0.0/8",      # loopback
    "169.254.0.0/16",   # link-local, where cloud metadata services live
    "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",  # special, test
    "224.0.0.0/4",      # multicast
    "240.0.0.0/4",      # reserved, and the broadcast address
))
_FORBIDDEN_V6 = tuple(ipaddress.IPv6Network(n) for n in (
    "::/128", "::1/128",  # unspecified, loopback
    "fe80::/10",        # link-local
    "fec0::/10",        # site-local (deprecated, still routed inside some networks)
    "fc00::/7",         # unique-local
    "ff00::/8",         # multicast
    "100::/64",         # discard
    "2001::/32",        # Teredo: the IPv4 inside is obfuscated, so no way to vet it
    "64:ff9b:1::/48",   # local-use NAT64 (RFC 8215): translates into a private network by design
    "2001:db8::/32",    # documentation
))
# IPv6 forms that carry an IPv4 address in their low 32 bits: judged by that address.
_EMBEDDING_V4 = tuple(ipaddress.IPv6Network(n) for n in ("::ffff:0:0/96", "::/96", "64:ff9b::/96"))
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")
_HOSTNAME = re.compile(r"(?=.{1,253}\.?$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?")
# A label a URL parser may read as (part of) an IPv4 number: decimal, octal or 0x-hex.
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_CANONICAL_V4 = re.compile(r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}")
_UNSAFE_CHARACTERS = re.compile(r"[\x00-\x20\x7f\\]")
_STANDARD_PORTS = {"https": 443, "http": 80}


class ImageFetchError(GatewayError):
    """A refused or failed image fetch. The message is generic; detail is for operator logs only."""

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.INVALID_REQUEST, "the image at image_url could not be fetched", param="image_url")
        self.detail = detail


@dataclass(frozen=True)
class _Target:
    """A parsed, vetted URL: where to connect is decided from these fields only."""

    scheme: str
    host: str  # lower-case hostname, or an IP literal (IPv6 without brackets)
    port: int
    path_and_query: str
    literal: IPAddress | None  # the address, when the URL names one


async def fetch_image(
    url: str,
    http: httpx.AsyncClient,
    *,
    max_bytes: int = MAX_IMAGE_BYTES,
    timeout: float = FETCH_TIMEOUT_SECONDS,
    resolver: Resolver | None = None,
    allow_insecure: bool = False,
    ports: Collection[int] = DEFAULT_PORTS,
    allowed_networks: Collection[IPNetwork] = (),
) -> tuple[str, bytes]:
    """Fetches an image by URL under the rules above; returns (mime type, bytes).

    http carries the connection only: its redirect setting, cookies and default
    headers are not used (give it no proxy, which would do its own resolving).
    resolver defaults to the system's. allowed_networks exempts addresses from the
    forbidden ranges (an operator's internal image store; tests' 127.0.0.1).
    Raises ImageFetchError for every refusal and failure.
    """
    target = _parse(url, allow_insecure=allow_insecure, ports=ports)
    try:
        async with asyncio.timeout(timeout):
            address = await _pin(target, resolver or resolve_host, allowed_networks)
            return await _get(http, target, address, max_bytes=max_bytes, timeout=timeout)
    except TimeoutError:
        raise ImageFetchError("timed out") from None
    except httpx.HTTPError as exc:  # the httpx message may name the address: keep only the kind
        raise ImageFetchError(f"transport: {type(exc).__name__}") from None


async def resolve_host(host: str, port: int) -> Sequence[str]:
    """The system resolver's TCP addresses for host."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def is_forbidden(address: IPAddress) -> bool:
    """Whether address is one the gateway must never connect to on a client's behalf."""
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in network for network in _FORBIDDEN_V6):
            return True
        if any(address in network for network in _EMBEDDING_V4):
            return is_forbidden(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address in _SIXTOFOUR:
            return is_forbidden(ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF))
    elif any(address in network for network in _FORBIDDEN_V4):
        return True
    # Belt and braces: whatever else the standard library knows is not globally reachable.
    return not address.is_global or address.is_multicast


def _parse(url: str, *, allow_insecure: bool, ports: Collection[int]) -> _Target:
    """The URL's parts, refused unless scheme, port and host spelling are acceptable."""
    if _UNSAFE_CHARACTERS.search(url):
        raise ImageFetchError("control characters, spaces or backslashes in the URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ImageFetchError("unparseable URL") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and allow_insecure):
        raise ImageFetchError(f"scheme {scheme[:16]!r} not allowed")
    if parts.username is not None or parts.password is not None:
        raise ImageFetchError("credentials in the URL")
    port = _STANDARD_PORTS[scheme] if port is None else port
    if port not in ports:
        raise ImageFetchError(f"port {port} not allowed")
    host = (parts.hostname or "").lower()
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(scheme, host, port, path, _literal(host))


def _literal(host: str) -> IPAddress | None:
    """The address a host names directly, None for a DNS name; odd IPv4 spellings are refused."""
    if ":" in host:
        if "%" in host:
            raise ImageFetchError("IPv6 zone in the URL")
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise ImageFetchError("bad IPv6 literal") from None
    if not host or not _HOSTNAME.fullmatch(host):
        raise ImageFetchError("bad host name")
    labels = host.rstrip(".").split(".")
    # A numeric last label makes URL parsers (WHATWG, inet_aton) read the host
    # as an IPv4 number: only the canonical dotted quad is accepted.
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        if not _CANONICAL_V4.fullmatch(host):
            raise ImageFetchError("non-canonical IPv4 address")
        return ipaddress.IPv4Address(host)
    return None


async def _pin(target: _Target, resolver: Resolver, allowed: Collection[IPNetwork]) -> IPAddress:
    """The one address to connect to: the literal, or the first the name resolves to.
    Every resolved address must be acceptable; a name with a private address is refused whole."""
    if target.literal is not None:
        candidates: list[IPAddress] = [target.literal]
    else:
        try:
            answers = await resolver(target.host, target.port)
        except OSError:
            raise ImageFetchError("name does not resolve") from None
        candidates = [_address(answer) for answer in answers]
    if not candidates:
        raise ImageFetchError("name does not resolve")
    for address in candidates:
        if is_forbidden(address) and not any(address in network for network in allowed):
            raise ImageFetchError(f"forbidden address {address}")
    return candidates[0]


def _address(answer: str) -> IPAddress:
    try:
        return ipaddress.ip_address(answer.partition("%")[0])  # a link-local scope changes nothing
    except ValueError:
        raise ImageFetchError("resolver returned a non-address") from None


async def _get(
    http: httpx.AsyncClient, target: _Target, address: IPAddress, *, max_bytes: int, timeout: float
) -> tuple[str, bytes]:
    """GETs the image from the pinned address; refuses redirects, non-images and oversize bodies."""
    connect_host = f"[{address}]" if address.version == 6 else str(address)
    host_header = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != _STANDARD_PORTS[target.scheme]:
        host_header += f":{target.port}"
    extensions: dict[str, object] = {"timeout": httpx.Timeout(timeout).as_dict()}
    if target.scheme == "https" and target.literal is None:
        extensions["sni_hostname"] = target.host  # and the certificate is checked against it
    # A bare Request, not client.build_request: the client's cookies and default
    # headers have no business in a fetch made for a stranger's URL.
    request = httpx.Request(
        "GET", f"{target.scheme}://{connect_host}:{target.port}{target.path_and_query}",
        headers={"host": host_header, "accept": "image/*", "accept-encoding": "identity", "user-agent": user_agent()},
        extensions=extensions,
    )
    response = await http.send(request, stream=True, follow_redirects=False)
    try:
        if response.status_code != 200:
            raise ImageFetchError(f"HTTP {response.status_code}")  # 3xx included: redirects are refused
        mime = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if not re.fullmatch(r"image/[a-z0-9.+-]+", mime):
            raise ImageFetchError(f"content type {mime[:40]!r} is not an image")
        if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
            # Identity was asked for; a compressed body could inflate far past the cap in one chunk.
            raise ImageFetchError("compressed body")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise ImageFetchError("declared size over the limit")
        return mime, await _read_capped(response, max_bytes)
    finally:
        await response.aclose()


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """The body, refused as soon as it grows past max_bytes (a missing or lying length is no help)."""
    parts: list[bytes] = []
    size = 0
    async for part in response.aiter_bytes():  # no decoding happens: only identity is accepted
        size += len(part)
        if size > max_bytes:
            raise ImageFetchError("body over the size limit")
        parts.append(part)
    return b"".join(parts)
