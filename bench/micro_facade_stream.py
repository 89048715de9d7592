"""Loop CPU per streamed completion on the facade's side of `tollgate serve`: before/after comparable.

    .venv/bin/python bench/micro_facade_stream.py                         # this tree
    .venv/bin/python bench/micro_facade_stream.py --compare /tmp/base     # A/B against another source tree

What runs is the facade (its own HTTP protocol under uvicorn, edge, hot route,
SSE writing) calling the core's ChatService through the in-process channel, so a
stream is a real InlineStreamCall; only the servicer is a stand-in: an async
generator yielding prepared messages, waiting on the event loop where the real
core waits (for the first chunk, between upstream reads, for the settlement),
so read_nowait finds what the real core would have ready. No SQLite, no
upstream, no core pipeline: what is left is the facade's and the in-process
call's own cost, per stream and per chunk, which bench/micro_stream.py mixes
with the core's.

Kinds (each stream asks for include_usage):
- unary    a non-streaming request (the stream's fixed cost is measured against it);
- burstN   first chunk (a wait before it), then N-1 more chunks and the finish chunk
           ready together (one wait), then the usage chunk after the settlement (one wait);
- spacedN  the same with a wait before every message (one upstream read per chunk).

Each tree's server runs in its own child process (PYTHONPATH=tree), driven by
one raw keep-alive client, one request at a time; CPU of the server process
from /proc/<pid>/task/*/schedstat, rounds alternated between trees (A B A B).
On a shared, busy machine CPU time swings by 10-20 % between rounds;
`--callgrind N` counts user-space instructions instead (valgrind, about 50x
slower, the same however busy the machine is; kernel work such as the socket
writes is not in it).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from micro_facade import _Client, _cpu_ns  # noqa: E402 - bench/ is put on the path just above

KINDS = ("unary", "burst1", "burst16", "burst256", "spaced16")


def _servicer() -> Any:
    import grpc

    from gateway_core.pb.gateway.v1 import chat_pb2 as pb
    from gateway_core.pb.gateway.v1 import chat_pb2_grpc, types_pb2

    head = {"id": "chatcmpl-bench", "created": 1741569952, "model": "bench-model"}
    first = pb.StreamChatCompletionResponse(
        **head, choices=[pb.ChoiceDelta(index=0, delta=pb.Delta(role=types_pb2.ROLE_ASSISTANT, content="tok "))])
    middle = pb.StreamChatCompletionResponse(**head, choices=[pb.ChoiceDelta(index=0, delta=pb.Delta(content="tok "))])
    finish = pb.StreamChatCompletionResponse(
        **head, choices=[pb.ChoiceDelta(index=0, delta=pb.Delta(), finish_reason=types_pb2.FINISH_REASON_STOP)])
    usage = pb.StreamChatCompletionResponse(
        **head, usage=types_pb2.Usage(prompt_tokens=12, completion_tokens=16, total_tokens=28, cost_micros=12))
    limits = (("x-ratelimit-limit-requests", "600"), ("x-ratelimit-remaining-requests", "599"))

    async def wake() -> None:
        """A wait the real core has here: woken through the loop from another task."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_soon(future.set_result, None)
        await future

    answer = pb.CreateChatCompletionResponse(
        **head, usage=usage.usage,
        choices=[pb.Choice(index=0, finish_reason=types_pb2.FINISH_REASON_STOP,
                           message=pb.Message(role=types_pb2.ROLE_ASSISTANT, content="tok " * 16))])

    class Servicer(chat_pb2_grpc.ChatServiceServicer):
        async def CreateChatCompletion(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
            await context.send_initial_metadata(limits)
            await wake()
            return answer

        async def StreamChatCompletion(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
            kind = request.model.rstrip("0123456789")
            count = int(request.model[len(kind):])
            await context.send_initial_metadata(limits)
            await wake()
            yield first
            if kind == "burst":
                await wake()
                for _ in range(count - 1):
                    yield middle
            else:
                for _ in range(count - 1):
                    await wake()
                    yield middle
                await wake()
            yield finish
            await wake()
            yield usage

    del grpc
    return Servicer()


def _serve(port_file: str) -> None:
    import uvicorn
    import uvloop

    from gateway_core.in_process import InProcessServices
    from gateway_core.pb.gateway.v1 import chat_pb2_grpc
    from http_facade.app import create_app
    from http_facade.edge_limits import EdgeLimits
    from http_facade.serving import uvicorn_config

    services = InProcessServices()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(_servicer(), services)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    Path(port_file).write_text(str(sock.getsockname()[1]))
    config = uvicorn_config(create_app(services.channel()), EdgeLimits(), access_log=False, log_level="warning",
                            lifespan="on")
    uvloop.run(uvicorn.Server(config).serve(sockets=[sock]))


def _body(kind: str) -> bytes:
    if kind == "unary":
        return b'{"model":"unary","messages":[{"role":"user","content":"Say something short."}],"max_tokens":1024}'
    return (b'{"model":"%s","messages":[{"role":"user","content":"Say something short."}],'
            b'"max_tokens":1024,"stream":true,"stream_options":{"include_usage":true}}' % kind.encode())


class _Server:
    def __init__(self, tree: Path, tmp: str, callgrind: bool = False) -> None:
        port_file = os.path.join(tmp, f"port-{abs(hash(str(tree)))}")
        env = {**os.environ, "PYTHONPATH": str(tree)}
        command = [sys.executable, __file__, "--serve", port_file]
        self._callgrind_out = ""
        if callgrind:  # instruction counts: slow (about 50x), but the same on a busy machine as on a quiet one
            self._callgrind_out = os.path.join(tmp, f"callgrind-{abs(hash(str(tree)))}")
            env["PYTHONMALLOC"] = "malloc"
            command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self._callgrind_out}",
                       "--dump-instr=no", *command]
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL if callgrind else None)
        deadline = time.monotonic() + (300 if callgrind else 30)
        while not (os.path.exists(port_file) and os.path.getsize(port_file)):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the facade of {tree} did not start")
            time.sleep(0.05)
        port = int(Path(port_file).read_text())
        client = None
        while client is None:
            try:
                client = _Client(port)
            except ConnectionRefusedError:
                time.sleep(0.05)
        self.client = client

    def measure(self, kind: str, count: int) -> float:
        body = _body(kind)
        for _ in range(max(count // 10, 5)):
            assert self.client.request("POST", "/v1/chat/completions", body) == 200
        start = _cpu_ns(self.proc.pid)
        for _ in range(count):
            self.client.request("POST", "/v1/chat/completions", body)
        return (_cpu_ns(self.proc.pid) - start) / count / 1e3

    def instructions(self, kind: str, count: int) -> float:
        """Thousands of user-space instructions per request (callgrind, every thread of the server)."""
        body = _body(kind)
        for _ in range(max(count // 5, 5)):
            assert self.client.request("POST", "/v1/chat/completions", body) == 200
        subprocess.run(["callgrind_control", "--zero", str(self.proc.pid)], check=True, capture_output=True)
        for _ in range(count):
            self.client.request("POST", "/v1/chat/completions", body)
        dumped = set(glob.glob(self._callgrind_out + "*"))
        subprocess.run(["callgrind_control", "--dump", str(self.proc.pid)], check=True, capture_output=True)
        total = 0
        for path in set(glob.glob(self._callgrind_out + "*")) - dumped:
            with open(path) as f:
                total += next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:")))
        return total / count / 1e3

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def _instructions(args: argparse.Namespace) -> None:
    trees = [ROOT.parent] + [Path(t).resolve() for t in args.compare]
    kinds = args.kinds.split(",")
    print(f"thousands of user-space instructions per request (callgrind, {args.callgrind} requests of each kind)")
    with tempfile.TemporaryDirectory() as tmp:
        for tree in trees:
            server = _Server(tree, tmp, callgrind=True)
            try:
                counts = {kind: server.instructions(kind, args.callgrind) for kind in kinds}
            finally:
                server.stop()
            print(f"  {tree}")
            for kind, thousands in counts.items():
                print(f"    {kind:<9} {thousands:9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", action="append", default=[], metavar="TREE")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1500, help="streams per round of burst1/burst16")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--callgrind", type=int, metavar="N",
                        help="instead: thousands of instructions per request over N requests of each kind, "
                             "under valgrind's callgrind (deterministic; needs valgrind)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve)
        return
    if args.callgrind:
        _instructions(args)
        return
    trees = [ROOT.parent] + [Path(t).resolve() for t in args.compare]
    kinds = args.kinds.split(",")
    counts = {"unary": args.requests, "burst1": args.requests, "burst16": args.requests, "burst256": max(args.requests // 8, 20),
              "spaced16": args.requests // 2}
    results: dict[tuple[int, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers = [_Server(tree, tmp) for tree in trees]
        try:
            for round_number in range(args.rounds):
                for kind in kinds:
                    for number, server in enumerate(servers):
                        results.setdefault((number, kind), []).append(server.measure(kind, counts[kind]))
                print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            for server in servers:
                server.stop()
    print(f"CPU us per stream of the facade + in-process call (stand-in servicer), median (best) of {args.rounds}")
    for number, tree in enumerate(trees):
        print(f"  {tree}")
        for kind in kinds:
            column = results[(number, kind)]
            print(f"    {kind:<9} {statistics.median(column):8.1f} ({min(column):7.1f})")
        if "burst256" in kinds and "burst16" in kinds:
            per = [(b - s) / 240 for b, s in zip(results[(number, "burst256")], results[(number, "burst16")],
                                                  strict=True)]
            print(f"    per extra chunk (burst256 vs burst16): {statistics.median(per):6.2f} ({min(per):6.2f})")


if __name__ == "__main__":
    main()
