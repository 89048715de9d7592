"""The hardened image fetcher: every forbidden address refused before any connection,
odd spellings, schemes and ports refused, pinning, redirects, type, size and time caps."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from gateway_core.errors import GatewayError, Reason
from gateway_core.providers.fetch import ImageFetchError, fetch_image, is_forbidden

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
LOCALHOST = [ipaddress.ip_network("127.0.0.1/32")]
MIB = 1024 * 1024


class RecordingTransport(httpx.AsyncBaseTransport):
    """The real transport, with a record of every request that got as far as connecting."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class Resolver:
    """A scripted DNS: the same answer every time, and a count of the questions."""

    answers: Sequence[str]
    calls: list[tuple[str, int]] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        return self.answers


@pytest.fixture()
async def transport() -> AsyncIterator[RecordingTransport]:
    recording = RecordingTransport()
    yield recording
    await recording.aclose()


@pytest.fixture()
async def http(transport: RecordingTransport) -> AsyncIterator[httpx.AsyncClient]:
    # follow_redirects=True on purpose: the fetcher must refuse redirects whatever its client does.
    async with httpx.AsyncClient(transport=transport, follow_redirects=True, trust_env=False) as client:
        yield client


@pytest.fixture()
def canary() -> Iterator[socket.socket]:
    """A listener on 127.0.0.1 standing in for an internal service: nothing may connect to it."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        yield listener


def connections_to(listener: socket.socket) -> int:
    count = 0
    while True:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1


def port_of(listener: socket.socket) -> int:
    return int(listener.getsockname()[1])


FORBIDDEN_ANSWERS = [
    ["127.0.0.1"], ["127.8.9.10"], ["10.1.2.3"], ["172.16.0.1"], ["172.31.255.255"], ["192.168.1.1"],
    ["169.254.169.254"], ["100.64.0.1"], ["100.127.255.254"], ["0.0.0.0"], ["224.0.0.1"], ["239.255.255.250"],
    ["255.255.255.255"], ["240.0.0.1"], ["192.0.2.1"], ["198.18.0.1"],
    ["::1"], ["::"], ["fe80::1"], ["fe80::1%eth0"], ["fc00::1"], ["fd12:3456::1"], ["ff02::1"], ["fec0::1"],
    ["::ffff:127.0.0.1"], ["::ffff:169.254.169.254"], ["::ffff:10.0.0.1"], ["::127.0.0.1"], ["::10.0.0.1"],
    ["64:ff9b::a9fe:a9fe"], ["64:ff9b:1::1"], ["2002:7f00:1::1"], ["2002:a00:1::1"], ["2001::1"],
    # One bad address spoils the name, whichever comes first.
    ["93.184.216.34", "127.0.0.1"], ["10.0.0.1", "93.184.216.34"],
    # Not an address at all.
    ["localhost"], [],
]


@pytest.mark.parametrize("answers", FORBIDDEN_ANSWERS, ids=lambda a: ",".join(a) or "nothing")
async def test_forbidden_resolved_addresses_are_refused_without_connecting(
    http: httpx.AsyncClient, transport: RecordingTransport, canary: socket.socket, answers: list[str],
) -> None:
    resolver = Resolver(answers)
    port = port_of(canary)
    with pytest.raises(ImageFetchError) as caught:
        await fetch_image(f"http://images.example:{port}/cat.png", http, resolver=resolver, allow_insecure=True,
                          ports=(port,))
    assert_generic(caught.value)
    assert resolver.calls == [("images.example", port)], "resolved exactly once"
    assert transport.requests == [] and connections_to(canary) == 0


FORBIDDEN_LITERALS = [
    "127.0.0.1", "0x7f000001", "0X7F000001", "2130706433", "0177.0.0.1", "0177.0000.0000.0001", "127.1", "127.0.1",
    "0x7f.0.0.1", "017700000001", "127.000.000.001", "0.0.0.0", "0", "10.0.0.1", "169.254.169.254",
    "0xa9fea9fe", "2852039166", "100.64.0.1", "224.0.0.1", "1.2.3.0x4", "example.0x7f",
    "[::1]", "[::]", "[0:0:0:0:0:0:0:1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::ffff:a9fe:a9fe]",
    "[fe80::1]", "[fd00::1]", "[ff02::1]", "[::127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::]",
]


@pytest.mark.parametrize("host", FORBIDDEN_LITERALS)
async def test_forbidden_address_literals_and_spellings_are_refused(
    http: httpx.AsyncClient, transport: RecordingTransport, canary: socket.socket, host: str,
) -> None:
    resolver = Resolver(["93.184.216.34"])
    port = port_of(canary)
    with pytest.raises(ImageFetchError) as caught:
        await fetch_image(f"http://{host}:{port}/x.png", http, resolver=resolver, allow_insecure=True, ports=(port,))
    assert_generic(caught.value)
    assert resolver.calls == [] and transport.requests == [] and connections_to(canary) == 0


@pytest.mark.parametrize("url", [
    "http://images.example/cat.png",  # http without allow_insecure
    "ftp://images.example/cat.png",
    "file:///etc/passwd",
    "data:image/png;base64,iVBORw0KGgo=",
    "gopher://images.example:70/_GET",
    "https://user:secret@images.example/cat.png",
    "https://images.example@127.0.0.1/cat.png",
    "https://images.example:8443/cat.png",  # port not allowed
    "https://images.example:99999/cat.png",
    "https://images.example/a b.png",
    "https://images.example\\@127.0.0.1/",
    "https://images.example/\r\nHost: evil",
    "https://[fe80::1%25eth0]/cat.png",
    "https:///cat.png",
    "https://-bad-.example/cat.png",
    "https://ex_ample.com/cat.png",
    "https://bücher.example/cat.png",
    "https://[::1/cat.png",
    "//images.example/cat.png",
    "",
])
async def test_urls_outside_the_rules_are_refused(http: httpx.AsyncClient, transport: RecordingTransport,
                                                  url: str) -> None:
    resolver = Resolver(["93.184.216.34"])
    with pytest.raises(ImageFetchError) as caught:
        await fetch_image(url, http, resolver=resolver)
    assert_generic(caught.value)
    assert resolver.calls == [] and transport.requests == []


def assert_generic(error: ImageFetchError) -> None:
    """Every refusal looks the same to the client; only the operator's detail differs."""
    assert isinstance(error, GatewayError) and error.reason == Reason.INVALID_REQUEST
    assert error.param == "image_url" and error.message == "the image at image_url could not be fetched"
    assert error.detail


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111",
                                     "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_forbidden(ipaddress.ip_address(address))


# --- against a real server on 127.0.0.1 (exempted through allowed_networks) ---


@dataclass
class ImageServer:
    """A scripted HTTP/1.1 server on 127.0.0.1 that records each request head."""

    canary_port: int
    heads: list[list[str]] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            self.heads.append(head)
            await self.answer(head[0].split(" ")[1], writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def answer(self, target: str, writer: asyncio.StreamWriter) -> None:
        path = target.partition("?")[0]
        if path == "/endless.png":  # no length, never ends: only a streaming cap stops it
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\nconnection: close\r\n\r\n")
            while True:
                writer.write(b"\0" * 65536)
                await writer.drain()
        if path == "/slow.png":
            await asyncio.sleep(5)
        status, headers, body = self.route(path)
        lines = [f"HTTP/1.1 {status}", *headers, f"content-length: {len(body)}", "connection: close", "", ""]
        writer.write("\r\n".join(lines).encode() + body)
        await writer.drain()

    def route(self, path: str) -> tuple[str, list[str], bytes]:
        routes: dict[str, tuple[str, list[str], bytes]] = {
            "/cat.png": ("200 OK", ["content-type: image/png"], PNG),
            "/photo.jpg": ("200 OK", ["Content-Type: IMAGE/JPEG; charset=binary"], PNG),
            "/big.png": ("200 OK", ["content-type: image/png"], b"\0" * (MIB + 1)),
            "/page.html": ("200 OK", ["content-type: text/html"], b"<html>not an image</html>"),
            "/svg-ish": ("200 OK", ["content-type: application/octet-stream"], PNG),
            "/no-type": ("200 OK", [], PNG),
            "/gzip.png": ("200 OK", ["content-type: image/png", "content-encoding: gzip"], gzip.compress(PNG)),
            "/redirect": ("302 Found", [f"location: http://127.0.0.1:{self.canary_port}/cat.png"], b""),
            "/moved": ("301 Moved Permanently", ["location: /cat.png"], b""),
        }
        return routes.get(path, ("404 Not Found", ["content-type: text/plain"], b"no"))


@pytest.fixture()
async def image_server(canary: socket.socket) -> AsyncIterator[ImageServer]:
    server = ImageServer(port_of(canary))
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server
        listener.close()


async def fetch_local(server: ImageServer, http: httpx.AsyncClient, path: str, *, resolver: Resolver | None = None,
                      max_bytes: int = 20 * MIB, timeout: float = 10.0) -> tuple[str, bytes]:
    """Fetches http://images.test:<port><path> from the local server, 127.0.0.1 exempted."""
    return await fetch_image(
        f"http://images.test:{server.port}{path}", http, resolver=resolver or Resolver(["127.0.0.1"]),
        allow_insecure=True, ports=(server.port,), allowed_networks=LOCALHOST, max_bytes=max_bytes, timeout=timeout,
    )


async def test_an_allowed_fetch_connects_to_the_pinned_address_with_the_original_host(
    image_server: ImageServer, http: httpx.AsyncClient, transport: RecordingTransport,
) -> None:
    resolver = Resolver(["127.0.0.1"])
    assert await fetch_local(image_server, http, "/cat.png?size=1", resolver=resolver) == ("image/png", PNG)
    assert resolver.calls == [("images.test", image_server.port)]
    head = image_server.heads[0]
    assert head[0] == "GET /cat.png?size=1 HTTP/1.1"
    assert f"host: images.test:{image_server.port}" in head
    assert [str(r.url.host) for r in transport.requests] == ["127.0.0.1"]
    assert not any(line.lower().startswith(("cookie", "authorization")) for line in head)


async def test_the_mime_type_is_normalised(image_server: ImageServer, http: httpx.AsyncClient) -> None:
    assert await fetch_local(image_server, http, "/photo.jpg") == ("image/jpeg", PNG)


async def test_a_redirect_is_refused_and_its_target_never_contacted(
    image_server: ImageServer, http: httpx.AsyncClient, canary: socket.socket,
) -> None:
    for path in ("/redirect", "/moved"):
        with pytest.raises(ImageFetchError) as caught:
            await fetch_local(image_server, http, path)
        assert caught.value.detail.startswith("HTTP 30")
    assert len(image_server.heads) == 2 and connections_to(canary) == 0


@pytest.mark.parametrize("path", ["/page.html", "/svg-ish", "/no-type", "/gzip.png", "/missing.png"])
async def test_anything_but_a_plain_image_is_refused(image_server: ImageServer, http: httpx.AsyncClient,
                                                     path: str) -> None:
    with pytest.raises(ImageFetchError):
        await fetch_local(image_server, http, path)


@pytest.mark.parametrize("path", ["/big.png", "/endless.png"])
async def test_oversize_bodies_are_refused_while_streaming(image_server: ImageServer, http: httpx.AsyncClient,
                                                           path: str) -> None:
    started = asyncio.get_running_loop().time()
    with pytest.raises(ImageFetchError) as caught:
        await fetch_local(image_server, http, path, max_bytes=MIB, timeout=5.0)
    assert "limit" in caught.value.detail
    assert asyncio.get_running_loop().time() - started < 3


async def test_the_whole_fetch_is_timed(image_server: ImageServer, http: httpx.AsyncClient) -> None:
    with pytest.raises(ImageFetchError) as caught:
        await fetch_local(image_server, http, "/slow.png", timeout=0.3)
    assert caught.value.detail == "timed out"


async def test_a_hanging_resolver_is_timed_too(http: httpx.AsyncClient) -> None:
    async def never(host: str, port: int) -> Sequence[str]:
        await asyncio.sleep(10)
        return []

    with pytest.raises(ImageFetchError):
        await fetch_image("https://images.example/cat.png", http, resolver=never, timeout=0.2)


async def test_https_goes_to_the_pinned_address_with_sni_and_host_of_the_name() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"content-type": "image/webp"}, content=PNG)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        resolver = Resolver(["93.184.216.34", "93.184.216.35"])
        result = await fetch_image("https://Images.Example/a/cat.webp?x=1#frag", client, resolver=resolver)
    assert result == ("image/webp", PNG)
    assert len(resolver.calls) == 1 and len(seen) == 1
    request = seen[0]
    assert str(request.url) == "https://93.184.216.34/a/cat.webp?x=1"  # the first answer, pinned
    assert request.headers["host"] == "images.example"
    assert request.extensions["sni_hostname"] == "images.example"


# --- TLS, with a throwaway certificate for images.test ---


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=images.test", "-addext", "subjectAltName=DNS:images.test"],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture()
async def tls_server(certificate: tuple[Path, Path], canary: socket.socket) -> AsyncIterator[ImageServer]:
    server = ImageServer(port_of(canary))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)

    def record_sni(connection: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        server.sni.append(name)

    context.sni_callback = record_sni
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=context)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server
        listener.close()


@pytest.mark.parametrize(("name", "ok"), [("images.test", True), ("other.test", False)])
async def test_tls_checks_the_certificate_against_the_name_not_the_address(
    tls_server: ImageServer, certificate: tuple[Path, Path], name: str, ok: bool,
) -> None:
    trust = ssl.create_default_context(cafile=str(certificate[0]))
    async with httpx.AsyncClient(verify=trust, trust_env=False) as client:
        fetch = fetch_image(f"https://{name}:{tls_server.port}/cat.png", client, resolver=Resolver(["127.0.0.1"]),
                            ports=(tls_server.port,), allowed_networks=LOCALHOST)
        if ok:
            assert await fetch == ("image/png", PNG)
            assert f"host: images.test:{tls_server.port}" in tls_server.heads[0]
        else:
            with pytest.raises(ImageFetchError):
                await fetch
    assert tls_server.sni == [name]
