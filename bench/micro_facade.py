"""Facade-only CPU per request and per streamed chunk, against a stub core: before/after comparable.

    .venv/bin/python bench/micro_facade.py                      # this tree
    .venv/bin/python bench/micro_facade.py --baseline 4e29f8f   # A/B against an older http_facade/

Only the facade works here: the core is a stub channel (an InProcessChannel
whose calls hand back a prepared answer at once; a stream's read waits once on
the event loop, as a real core's does), so what is measured is the facade's
own work (ASGI edge, routing, body reading, JSON <-> protobuf, response and SSE
framing) plus, over the socket, uvicorn's HTTP parsing and writing.

Two levels, each in its own child process, alternated (A B A B) with
--baseline, whose http_facade/ is exported with `git archive` and put first on
sys.path (gateway_core stays this tree's):
- asgi: app(scope, receive, send) called directly, CPU of the process (one thread);
- socket: the app under uvicorn with the facade's own config (uvloop, the facade's
  own HTTP protocol, edge_protocol.py), driven by a raw keep-alive client in another
  process, one request at a time; CPU of the server process only
  (/proc/<pid>/task/*/schedstat, ns). "socket bare" is the same server around an
  app that only answers: the HTTP protocol, the event loop and the system calls.
Numbers are CPU microseconds: per unary request, per 16-chunk stream, and per
streamed chunk (the marginal cost between a 16- and a 256-chunk stream).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-tg-" + "x" * 48
PROMPT = "Say something short about the weather in Paris today. " * 4


def _body(stream: bool, chunks: int) -> bytes:
    payload: dict[str, Any] = {
        "model": f"bench-{chunks}",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": PROMPT},
        ],
        "max_tokens": 64,
        "temperature": 0.2,
        "stream": stream,
    }
    if stream:
        payload["stream_options"] = {"include_usage": True}
    return json.dumps(payload, separators=(",", ":")).encode()


# --- the stub core --------------------------------------------------------------------------


def _stub_channel() -> Any:
    import grpc

    from gateway_core.in_process import InProcessChannel, InProcessServices
    from gateway_core.pb.gateway.v1 import chat_pb2 as pb
    from gateway_core.pb.gateway.v1 import types_pb2

    usage = types_pb2.Usage(prompt_tokens=19, completion_tokens=16, total_tokens=35, cost_micros=12)
    answer = pb.CreateChatCompletionResponse(
        id="chatcmpl-bench", created=1741569952, model="bench-model", system_fingerprint="fp_bench",
        choices=[pb.Choice(index=0, finish_reason=types_pb2.FINISH_REASON_STOP,
                           message=pb.Message(role=types_pb2.ROLE_ASSISTANT, content="Sunny and mild, 21 C."))],
        usage=usage,
    )
    first = pb.StreamChatCompletionResponse(id="chatcmpl-bench", created=1741569952, model="bench-model",
                                            choices=[pb.ChoiceDelta(index=0, delta=pb.Delta(role=types_pb2.ROLE_ASSISTANT, content=""))])
    middle = pb.StreamChatCompletionResponse(id="chatcmpl-bench", created=1741569952, model="bench-model",
                                             choices=[pb.ChoiceDelta(index=0, delta=pb.Delta(content=" word"))])
    last = pb.StreamChatCompletionResponse(id="chatcmpl-bench", created=1741569952, model="bench-model",
                                           choices=[pb.ChoiceDelta(index=0, delta=pb.Delta(), finish_reason=types_pb2.FINISH_REASON_STOP)])
    tail = pb.StreamChatCompletionResponse(id="chatcmpl-bench", created=1741569952, model="bench-model", usage=usage)
    limits = grpc.aio.Metadata(("x-ratelimit-limit-requests", "600"), ("x-ratelimit-remaining-requests", "599"))
    models = pb.ListModelsResponse(models=[pb.Model(id="bench-model", created=1700000000, owned_by="mock")])

    class UnaryCall:
        def __init__(self, response: Any) -> None:
            self._response = response

        def __await__(self) -> Any:
            return self._result().__await__()

        async def _result(self) -> Any:
            return self._response

        async def initial_metadata(self) -> Any:
            return limits

        def cancel(self) -> bool:
            return False

    class StreamCall:
        def __init__(self, count: int) -> None:
            self._messages = [first] + [middle] * (count - 2) + [last, tail]
            self._next = 0

        async def read(self) -> Any:
            if self._next == len(self._messages):
                return grpc.aio.EOF
            await asyncio.sleep(0)  # a real core's message arrives through the loop
            self._next += 1
            return self._messages[self._next - 1]

        async def initial_metadata(self) -> Any:
            return limits

        def cancel(self) -> bool:
            return False

    class StubChannel(InProcessChannel):
        def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
            response = models if method.endswith("/ListModels") else answer
            return lambda request, **options: UnaryCall(response)

        def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
            return lambda request, **options: StreamCall(int(request.model.split("-")[1]))

    return StubChannel(InProcessServices())


def _app() -> Any:
    from http_facade.app import create_app

    return create_app(_stub_channel())


# --- ASGI level -----------------------------------------------------------------------------


async def _asgi(requests: int, streams: int) -> dict[str, float]:
    app = _app()
    state: dict[str, Any] = {}
    started = asyncio.Event()
    stop = asyncio.Event()
    startup_sent = False

    async def lifespan_receive() -> Any:
        nonlocal startup_sent
        if not startup_sent:
            startup_sent = True
            return {"type": "lifespan.startup"}
        await stop.wait()
        return {"type": "lifespan.shutdown"}

    async def lifespan_send(message: Any) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    lifespan = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state},
                                         lifespan_receive, lifespan_send))
    await started.wait()
    never = asyncio.Event()

    async def one(method: str, path: str, body: bytes, target: Any = app) -> int:
        headers = [(b"host", b"127.0.0.1:8080"), (b"content-type", b"application/json"),
                   (b"authorization", b"Bearer " + KEY.encode()), (b"content-length", str(len(body)).encode())]
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
                 "query_string": b"", "headers": headers, "client": ("127.0.0.1", 50000),
                 "server": ("127.0.0.1", 8080), "state": state.copy()}
        sent_body = False
        status = 0

        async def receive() -> Any:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await never.wait()
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await target(scope, receive, send)
        return status

    unary, stream16, stream256 = _body(False, 0), _body(True, 16), _body(True, 256)
    for _ in range(200):
        assert await one("POST", "/v1/chat/completions", unary) == 200
        assert await one("POST", "/v1/chat/completions", stream16) == 200
        assert await one("GET", "/v1/models", b"") == 200

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    def timed(method: str, path: str, body: bytes, count: int, target: Any = app) -> Any:
        async def run() -> float:
            start = time.process_time()
            for _ in range(count):
                await one(method, path, body, target)
            return (time.process_time() - start) / count * 1e6

        return run()

    results = {
        # This harness around an app that only answers: what the rows below include besides the facade.
        "asgi harness": await timed("POST", "/v1/chat/completions", unary, requests, bare),
        "asgi unary": await timed("POST", "/v1/chat/completions", unary, requests),
        "asgi models": await timed("GET", "/v1/models", b"", requests),
        "asgi stream16": await timed("POST", "/v1/chat/completions", stream16, streams),
        "asgi stream256": await timed("POST", "/v1/chat/completions", stream256, streams // 8),
    }
    results["asgi per chunk"] = (results["asgi stream256"] - results["asgi stream16"]) / 240
    stop.set()
    await lifespan
    return results


# --- socket level ---------------------------------------------------------------------------


async def _bare_app(scope: Any, receive: Any, send: Any) -> None:
    """Answers every request at once: under uvicorn, what is left is the HTTP protocol's own cost."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


def _serve(port_file: str, bare: bool = False) -> None:
    """The server child: the app (or the bare one) under uvicorn as `tollgate facade` runs it."""
    import uvicorn
    import uvloop

    from http_facade.edge_limits import EdgeLimits
    from http_facade.serving import uvicorn_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    Path(port_file).write_text(str(sock.getsockname()[1]))
    app = _bare_app if bare else _app()
    config = uvicorn_config(app, EdgeLimits(), access_log=False, log_level="warning", lifespan="on")
    uvloop.run(uvicorn.Server(config).serve(sockets=[sock]))


def _cpu_ns(pid: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


class _Client:
    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = self._sock.makefile("rb")
        self._port = port

    def request(self, method: str, path: str, body: bytes) -> int:
        head = (f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{self._port}\r\ncontent-type: application/json\r\n"
                f"authorization: Bearer {KEY}\r\ncontent-length: {len(body)}\r\n\r\n").encode()
        self._sock.sendall(head + body)
        status = int(self._file.readline()[9:12])
        length = -1
        chunked = False
        while (line := self._file.readline()) != b"\r\n":
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                chunked = True
        if not chunked:
            self._file.read(length)
            return status
        while True:
            size = int(self._file.readline().split(b";")[0], 16)
            self._file.read(size + 2)
            if size == 0:
                return status


def _socket(requests: int, streams: int, bare: bool = False) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        serve = "--serve-bare" if bare else "--serve"
        server = subprocess.Popen([sys.executable, __file__, serve, port_file], env=os.environ.copy())
        try:
            deadline = time.monotonic() + 30
            while not (os.path.exists(port_file) and os.path.getsize(port_file)):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the facade under uvicorn did not start")
                time.sleep(0.05)
            port = int(Path(port_file).read_text())
            client = None
            while client is None:
                try:
                    client = _Client(port)
                except ConnectionRefusedError:
                    time.sleep(0.05)
            unary, stream16, stream256 = _body(False, 0), _body(True, 16), _body(True, 256)
            if bare:
                for _ in range(300):
                    assert client.request("POST", "/v1/chat/completions", unary) == 200
                start = _cpu_ns(server.pid)
                for _ in range(requests):
                    client.request("POST", "/v1/chat/completions", unary)
                return {"socket bare": (_cpu_ns(server.pid) - start) / requests / 1e3}
            for _ in range(300):
                assert client.request("POST", "/v1/chat/completions", unary) == 200
                assert client.request("POST", "/v1/chat/completions", stream16) == 200
                assert client.request("GET", "/v1/models", b"") == 200

            def timed(method: str, path: str, body: bytes, count: int) -> float:
                start = _cpu_ns(server.pid)
                for _ in range(count):
                    client.request(method, path, body)
                return (_cpu_ns(server.pid) - start) / count / 1e3

            results = {
                "socket unary": timed("POST", "/v1/chat/completions", unary, requests),
                "socket models": timed("GET", "/v1/models", b"", requests),
                "socket stream16": timed("POST", "/v1/chat/completions", stream16, streams),
                "socket stream256": timed("POST", "/v1/chat/completions", stream256, streams // 8),
            }
            results["socket per chunk"] = (results["socket stream256"] - results["socket stream16"]) / 240
            return results
        finally:
            server.terminate()
            server.wait(10)


# --- driver ---------------------------------------------------------------------------------


def _child(args: argparse.Namespace) -> None:
    import uvloop

    results = uvloop.run(_asgi(args.requests, args.streams))
    results.update(_socket(args.requests, args.streams))
    results.update(_socket(args.requests, args.streams, bare=True))
    print(json.dumps(results))


def _export(rev: str, into: str) -> None:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "http_facade"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="git revision whose http_facade/ is measured as 'before'")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--streams", type=int, default=400)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve or args.serve_bare:
        _serve(args.serve or args.serve_bare, bare=bool(args.serve_bare))
        return
    if args.child:
        _child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        # Children find http_facade/ on PYTHONPATH: the exported one first for the baseline.
        variants: list[tuple[str, str]] = [("this tree", str(ROOT))]
        if args.baseline:
            _export(args.baseline, tmp)
            variants.insert(0, (f"baseline {args.baseline}", tmp + os.pathsep + str(ROOT)))
        runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in variants}
        for _ in range(args.rounds):
            for name, path in variants:
                env = {**os.environ, "PYTHONPATH": path}
                out = subprocess.run(
                    [sys.executable, __file__, "--child", "--requests", str(args.requests),
                     "--streams", str(args.streams)],
                    check=True, capture_output=True, text=True, env=env, cwd=ROOT,
                ).stdout
                runs[name].append(json.loads(out.strip().splitlines()[-1]))
    keys = list(next(iter(runs.values()))[0])
    print(f"CPU microseconds, median (min) of {args.rounds} alternated runs; facade only (stub core)")
    print(f"{'':<18}" + "".join(f"{name:>26}" for name in runs))
    for key in keys:
        cells = []
        for values in runs.values():
            column = [run[key] for run in values]
            cells.append(f"{statistics.median(column):>17.1f} ({min(column):6.1f})")
        print(f"{key:<18}" + "".join(cells))


if __name__ == "__main__":
    main()
