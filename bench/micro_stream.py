"""Gateway CPU per streamed completion and per extra chunk, through the real facade + core.

    .venv/bin/python bench/micro_stream.py                          # this tree, about 1 minute
    .venv/bin/python bench/micro_stream.py --compare /tmp/base      # A/B against another source tree
    .venv/bin/python bench/micro_stream.py --rounds 5 --kinds unary,burst16,burst256

Each tree runs as a real `tollgate serve` process (uvicorn + the facade + the core
in-process, auth, limits, hold/settle on a temporary SQLite file, JSON log lines,
metrics), started from that tree's sources (PYTHONPATH), against one fake
OpenAI-style upstream in its own process. This script is the load: raw keep-alive
HTTP/1.1 connections, one request in flight on each.

What is measured is CPU time of the gateway process, per thread, from
/proc/<pid>/task/*/sched (the scheduler's sum, microseconds; clock ticks from
.../stat where the kernel lacks it): the event-loop thread (the main thread) and the rest
(the SQLite writer, gRPC and other threads), over N requests of one kind,
rounds interleaved between the trees (A B A B), median and best reported:

- unary      a non-streaming request (for the stream's fixed cost against it);
- burstN     a stream of N content chunks + finish + usage, all written by the
             upstream at once (as bench/fake_upstream.py does: chunks reach the
             gateway in a few socket reads);
- spacedN    the same, each upstream event written on its own ~1 ms apart (as a
             real model streams tokens: one socket read per chunk);
- per chunk  (burst256 - burst16) / 240 and (spaced64 - spaced16) / 48.

Every stream asks for stream_options.include_usage, so the usage chunk and
[DONE] are part of the work. A tree given with --compare needs only to be a
checkout of Tollgate (e.g. `git archive <commit> | tar -x -C /tmp/base`).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
SPACING_SECONDS = 0.001
CONFIG = """
[server]
http_address = "127.0.0.1:{http}"
grpc_address = "127.0.0.1:{grpc}"

[database]
url = "sqlite:///{db}"

[admin]
token = "bench-admin-token-0123456789"

[keys]
pepper = "bench-pepper-0123456789abcdef"

[demo]
create_account = true

[[providers]]
name = "upstream"
type = "openai"
base_url = "http://127.0.0.1:{upstream}/v1"
api_key = "sk-upstream-bench"
{models}
"""
MODEL = """
[[models]]
name = "{name}"
routes = [{{ provider = "upstream", model = "{name}" }}]
input_price = 0.15
output_price = 0.60
max_output_tokens = 4096
"""
KINDS = ("unary", "burst1", "burst16", "burst256", "spaced16", "spaced64")


# --- the fake upstream (its own process) ---------------------------------------------------

_PREFIX = b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-model",'
_COMPLETION = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"' + b"tok " * 16 + b'"},'
    b'"finish_reason":"stop","logprobs":null}],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":16,"total_tokens":28}}'
)


def _chunk(data: bytes) -> bytes:
    event = b"data: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def _events(chunks: int) -> list[bytes]:
    """The HTTP chunks of one streamed answer: head + first, tokens, finish, usage, [DONE] + end."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    first = _chunk(_PREFIX + b'"choices":[{"index":0,"delta":{"role":"assistant","content":"tok "},"finish_reason":null}]}')
    token = _chunk(_PREFIX + b'"choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}')
    finish = _chunk(_PREFIX + b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}')
    usage = _chunk(_PREFIX + b'"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":%d,"total_tokens":%d}}'
                   % (chunks, chunks + 12))
    return [head + first, *([token] * (chunks - 1)), finish, usage + _chunk(b"[DONE]") + b"0\r\n\r\n"]


class _Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head = self._buffer[:end].lower()
            at = head.find(b"content-length:")
            line_end = head.find(b"\r\n", at)
            length = int(head[at + 15: line_end if line_end > 0 else None]) if at >= 0 else 0
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            body = self._buffer[end + 4: total].replace(b" ", b"")
            self._buffer = self._buffer[total:]
            self._answer(body)

    def _answer(self, body: bytes) -> None:
        assert self._transport is not None
        if b'"stream":true' not in body:
            self._transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                                  % (len(_COMPLETION), _COMPLETION))
            return
        model = body.split(b'"model":"', 1)[1].split(b'"', 1)[0].decode()
        kind, count = model.rstrip("0123456789"), int(model[len(model.rstrip("0123456789")):])
        events = _events(count)
        if kind == "burst":
            self._transport.write(b"".join(events))
        else:
            asyncio.ensure_future(self._spaced(self._transport, events))

    @staticmethod
    async def _spaced(transport: asyncio.Transport, events: list[bytes]) -> None:
        for event in events:
            transport.write(event)
            await asyncio.sleep(SPACING_SECONDS)


async def _serve_upstream(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Upstream, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# --- the load ------------------------------------------------------------------------------


def _request(port: int, key: str, kind: str) -> bytes:
    stream = kind != "unary"
    payload: dict[str, object] = {
        "model": "bench-model" if not stream else kind,
        "messages": [{"role": "user", "content": "Say something short."}],
        "max_tokens": 1024,
        "stream": stream,
    }
    if stream:
        payload["stream_options"] = {"include_usage": True}
    body = json.dumps(payload, separators=(",", ":")).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer {key}\r\ncontent-length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, stream: bool) -> None:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if head[9:12] != b"200":
        raise RuntimeError(f"gateway answered {head[:12]!r}")
    lower = head.lower()
    at = lower.find(b"content-length:")
    if at >= 0:
        await reader.readexactly(int(lower[at + 15: lower.find(b"\r\n", at)]))
        return
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        body += (await reader.readexactly(size + 2))[:-2]
        if size == 0:
            break
    if stream and (not body.endswith(b"data: [DONE]\n\n") or b'"usage":{' not in body):
        raise RuntimeError("stream did not end with its usage chunk and [DONE]")


async def _load(port: int, key: str, kind: str, count: int, concurrency: int) -> None:
    request = _request(port, key, kind)
    left = count

    async def connection() -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while left > 0:
                left -= 1
                await _one(reader, writer, request, kind != "unary")
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(min(concurrency, count))))


def _thread_seconds(pid: int, task: str) -> float:
    """CPU seconds of one thread: the scheduler's own sum (microsecond precision) where the kernel
    shows it (/proc/.../sched), else utime + stime in clock ticks (10 ms: needs long rounds)."""
    try:
        with open(f"/proc/{pid}/task/{task}/sched") as f:
            for line in f:
                if line.startswith("se.sum_exec_runtime"):
                    return float(line.rsplit(":", 1)[1]) / 1000  # milliseconds
    except OSError:
        pass
    with open(f"/proc/{pid}/task/{task}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _thread_cpu(pid: int) -> tuple[float, float]:
    """(main thread, other threads) CPU seconds of a process so far."""
    main = other = 0.0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            seconds = _thread_seconds(pid, task)
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just ended
        if int(task) == pid:
            main += seconds
        else:
            other += seconds
    return main, other


# --- the gateways --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


class Gateway:
    """One `tollgate serve` from a source tree, with its demo key."""

    def __init__(self, tree: Path, upstream_port: int, workdir: Path, cprofile: Path | None = None,
                 callgrind: bool = False) -> None:
        self.tree = tree
        self.callgrind_out = str(workdir / "callgrind.out") if callgrind else ""
        self.port = _free_port()
        workdir.mkdir(parents=True)
        models = "".join(MODEL.format(name=name) for name in ("bench-model", *KINDS[1:]))
        config = CONFIG.format(http=self.port, grpc=_free_port(), db=workdir / "bench.db", upstream=upstream_port,
                               models=models)
        (workdir / "tollgate.toml").write_text(config)
        env = {**os.environ, "PYTHONPATH": str(tree)}
        code = "import sys; from gateway_core.cli import main; sys.argv[0] = 'tollgate'; main()"
        if cprofile:  # deterministic profile of the loop thread's CPU, written when the gateway stops
            code = ("import atexit, cProfile, sys, time; profile = cProfile.Profile(time.thread_time); "
                    f"atexit.register(lambda: (profile.disable(), profile.dump_stats({str(cprofile)!r}))); "
                    "profile.enable(); from gateway_core.cli import main; sys.argv[0] = 'tollgate'; main()")
        command = [sys.executable, "-c", code, "serve", "--config", str(workdir / "tollgate.toml")]
        if callgrind:  # instruction counts: ~50x slower, but the same on a busy machine as on a quiet one
            env["PYTHONMALLOC"] = "malloc"
            command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.callgrind_out}",
                       "--dump-instr=no", "--separate-threads=yes", *command]
        self.proc = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        self.key = ""
        for line in self.proc.stdout:
            if line.strip().startswith("sk-"):
                self.key = line.strip()
                break
        if not self.key:
            raise RuntimeError(f"no demo key printed by the gateway of {tree}")
        _wait_port(self.port, self.proc, timeout=300 if callgrind else 60)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _measure(gateway: Gateway, kind: str, count: int, concurrency: int) -> tuple[float, float]:
    """(loop thread, other threads) CPU microseconds per request of one kind."""
    await _load(gateway.port, gateway.key, kind, max(count // 10, 4), concurrency)  # settle in
    await asyncio.sleep(0.05)
    main0, other0 = _thread_cpu(gateway.proc.pid)
    await _load(gateway.port, gateway.key, kind, count, concurrency)
    await asyncio.sleep(0.1)  # the last settlements land inside the window
    main1, other1 = _thread_cpu(gateway.proc.pid)
    return (main1 - main0) / count * 1e6, (other1 - other0) / count * 1e6


async def _instructions(gateway: Gateway, kind: str, count: int, concurrency: int) -> tuple[float, float]:
    """Thousands of user-space instructions per request of one kind (callgrind): (event-loop thread,
    other threads). The writer thread's share moves with how its group commits happen to fall."""
    await _load(gateway.port, gateway.key, kind, max(count // 5, 4), concurrency)  # settle in
    await asyncio.sleep(0.5)
    subprocess.run(["callgrind_control", "--zero", str(gateway.proc.pid)], check=True, capture_output=True)
    await _load(gateway.port, gateway.key, kind, count, concurrency)
    await asyncio.sleep(1.0)  # the last settlements land inside the window
    dumped = set(glob.glob(gateway.callgrind_out + "*"))
    subprocess.run(["callgrind_control", "--dump", str(gateway.proc.pid)], check=True, capture_output=True)
    loop = other = 0
    for path in set(glob.glob(gateway.callgrind_out + "*")) - dumped:
        with open(path) as f:
            counted = next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:")))
        if path.endswith("-01"):  # thread 1: the main thread, which runs the event loop
            loop += counted
        else:
            other += counted
    return loop / count / 1e3, other / count / 1e3


async def _profile(gateway: Gateway, kind: str, args: argparse.Namespace) -> None:
    """py-spy (GIL-holding samples: Python CPU) of the first tree's gateway under load of one kind."""
    await _load(gateway.port, gateway.key, kind, 50, args.concurrency)
    spy = str(Path(sys.executable).parent / "py-spy")
    out = Path(args.profile_out or f"/tmp/micro-stream-{kind}.txt")
    if args.cprofile:  # the gateway profiles itself; just load it
        deadline = time.monotonic() + args.profile_seconds
        while time.monotonic() < deadline:
            await _load(gateway.port, gateway.key, kind, 20, args.concurrency)
        print(f"cProfile stats in {args.profile_out} once the gateway has stopped")
        return
    if args.perf:  # C-level costs (kernel, libpython, SQLite): `perf report -i OUT --sort dso,sym`
        command = ["perf", "record", "-g", "-o", str(out), "-p", str(gateway.proc.pid), "--",
                   "sleep", str(args.profile_seconds)]
    else:
        command = [spy, "record", "--gil", "--nonblocking", "-r", "400", "-d", str(args.profile_seconds),
                   "-f", "raw", "-o", str(out), "-p", str(gateway.proc.pid)]
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while recorder.poll() is None:
        await _load(gateway.port, gateway.key, kind, 20, args.concurrency)
    print(f"py-spy samples (collapsed stacks) in {out}")


def _counts(requests: int) -> dict[str, int]:
    return {"unary": requests, "burst1": requests, "burst16": requests, "burst256": max(requests // 8, 20),
            "spaced16": requests // 2, "spaced64": max(requests // 4, 20)}


async def _run(args: argparse.Namespace) -> None:
    trees = [ROOT] + [Path(t).resolve() for t in args.compare]
    kinds = args.kinds.split(",")
    counts = _counts(args.requests)
    upstream_port = _free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--upstream", str(upstream_port)])
    gateways: list[Gateway] = []
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    try:
        _wait_port(upstream_port, upstream)  # type: ignore[arg-type]
        with tempfile.TemporaryDirectory(prefix="micro-stream-") as tmp:
            for number, tree in enumerate(trees):
                cprofile = Path(args.profile_out) if args.cprofile and number == 0 else None
                gateways.append(Gateway(tree, upstream_port, Path(tmp) / f"g{number}", cprofile,
                                        callgrind=bool(args.callgrind)))
            if args.callgrind:
                print(f"thousands of user-space instructions per request (callgrind, {args.callgrind} requests "
                      f"of each kind, concurrency {args.concurrency}, median of {args.rounds})")
                for kind in kinds:
                    for number, gateway in enumerate(gateways):
                        counted = [await _instructions(gateway, kind, args.callgrind, args.concurrency)
                                   for _ in range(args.rounds)]
                        loops, others = [c[0] for c in counted], [c[1] for c in counted]
                        print(f"  {kind:<9} loop {statistics.median(loops):8.1f} {[round(c) for c in loops]}  "
                              f"other {statistics.median(others):7.1f} {[round(c) for c in others]}  {gateway.tree}",
                              flush=True)
                return
            if args.profile:
                await _profile(gateways[0], args.profile, args)
                return
            for gateway in gateways:  # warm-up: imports, caches, first connections
                for kind in kinds:
                    await _measure(gateway, kind, 40, args.concurrency)
            for round_number in range(args.rounds):
                for kind in kinds:
                    for number, gateway in enumerate(gateways):
                        results.setdefault((number, kind), []).append(
                            await _measure(gateway, kind, counts[kind], args.concurrency))
                print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for gateway in gateways:
            gateway.stop()
        upstream.terminate()
        upstream.wait()
    for pick_name, pick in (("median", statistics.median), ("best", min)):
        print(f"\n{pick_name} of {args.rounds} rounds, CPU us per request (loop thread / other threads), "
              f"concurrency {args.concurrency}:")
        for number, tree in enumerate(trees):
            print(f"  {tree}")
            _report({kind: results[(number, kind)] for kind in kinds}, pick)


def _report(rows: dict[str, list[tuple[float, float]]], pick: object) -> None:
    choose = pick  # statistics.median or min

    def value(kind: str, index: int) -> float:
        return choose([r[index] for r in rows[kind]])  # type: ignore[operator]

    for kind in rows:
        print(f"    {kind:<9} loop {value(kind, 0):8.0f}   other {value(kind, 1):7.0f}")
    for big, small, extra in (("burst256", "burst16", 240), ("spaced64", "spaced16", 48)):
        if big in rows and small in rows:
            per_chunk = choose([(b[0] - s[0]) / extra for b, s in zip(rows[big], rows[small], strict=True)])  # type: ignore[operator]
            print(f"    per extra chunk ({big} vs {small}): loop {per_chunk:6.1f}")
    if "unary" in rows and "burst16" in rows:
        print(f"    burst16 - unary: loop {value('burst16', 0) - value('unary', 0):6.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", action="append", default=[], metavar="TREE",
                        help="another source tree to measure in the same run, interleaved")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400, help="requests per round of unary and burst16")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--profile", choices=KINDS, help="instead of measuring, py-spy the first tree under this load")
    parser.add_argument("--cprofile", action="store_true",
                        help="with --profile and --profile-out: cProfile (CPU time) of the gateway's loop thread")
    parser.add_argument("--callgrind", type=int, metavar="N",
                        help="instead of CPU time: user-space instructions per request over N requests (valgrind)")
    parser.add_argument("--perf", action="store_true", help="with --profile: perf record instead of py-spy")
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument("--profile-out", help="where the collapsed stacks go (default /tmp/micro-stream-KIND.txt)")
    parser.add_argument("--upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        uvloop = None  # type: ignore[assignment]
    if args.upstream:
        (uvloop.run if uvloop else asyncio.run)(_serve_upstream(args.upstream))
        return
    (uvloop.run if uvloop else asyncio.run)(_run(args))


if __name__ == "__main__":
    main()
