"""CPU per upstream call and per streamed SSE event: the previous HTTP client (httpx) against this one.

    .venv/bin/python bench/micro_upstream.py [--rounds 5] [--baseline REV]

Both sides run the real OpenAIProvider (URL, headers, the HTTP client, SSE
parsing, translation to protobuf) against bench/fake_upstream.py on
loopback, each in its own worker process on uvloop (as `tollgate serve`
does): "old" is the whole gateway_core package as of REV (by default the
commit before the new client arrived, found with git), "new" is this
checkout. Workers alternate (old, new, old, new, ...) and each reports
process CPU time (all threads; the fake upstream is another process), so the
numbers stay comparable on a busy machine; the table shows medians.

Rows (us of CPU):
- unary c=1 / c=16: provider.complete(), one call at a time and 16 concurrent;
- stream 16: provider.stream() of 16 content chunks + finish + usage + [DONE], per stream,
  all arriving at once; "paced" has the fake wait 1 ms between chunks, so each of the
  16 arrivals is its own socket read and wake-up, as with a real model;
- per event: (stream of 256 chunks - stream of 16 chunks) / 240, i.e. one more SSE event
  through the provider (transport, SSE parsing and translation), arriving in bulk;
- per paced event: (paced stream 16 - unary c=1) / 16, one more arrival through the provider;
- transport ...: the client and SSE parser alone, no translation or provider code
  (post + read the JSON body; post + iterate the SSE events), same definitions.
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
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# --- worker side: runs with PYTHONPATH set to one gateway_core tree ---


async def _worker(port: int, paced_port: int, calls: int, streams: int) -> dict[str, float]:
    from gateway_core.config import ProviderSettings
    from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
    from gateway_core.providers import http as http_module
    from gateway_core.providers.base import UpstreamCall
    from gateway_core.providers.openai.client import OpenAIProvider

    base = f"http://127.0.0.1:{port}/v1"
    paced_base = f"http://127.0.0.1:{paced_port}/v1"
    client = http_module.make_http_client()
    provider = OpenAIProvider(ProviderSettings(name="bench", type="openai", base_url=base, api_key="sk-bench"), client)
    paced = OpenAIProvider(ProviderSettings(name="paced", type="openai", base_url=paced_base, api_key="sk-bench"),
                           client)

    def call(model: str, stream: bool) -> UpstreamCall:
        cls = chat_pb2.StreamChatCompletionRequest if stream else chat_pb2.CreateChatCompletionRequest
        request = cls(model="bench-model")
        request.messages.add(role=types_pb2.ROLE_USER, content="Say hello in sixteen tokens, please.")
        return UpstreamCall(request=request, upstream_model=model, client_model="bench-model",
                            request_id="req_0123456789abcdef", timeout_seconds=60.0)

    unary, streamed = call("bench-model", False), call("bench-model", True)
    long_stream = call("chunks-256", True)

    async def one_stream(upstream: UpstreamCall, via: Any = provider) -> None:
        async for _ in via.stream(upstream):
            pass

    async def cpu(count: int, make: Any, concurrency: int = 1) -> float:
        for _ in range(max(count // 20, 5)):
            await make()
        start = time.process_time()
        if concurrency == 1:
            for _ in range(count):
                await make()
        else:
            async def lane() -> None:
                for _ in range(count // concurrency):
                    await make()
            await asyncio.gather(*(lane() for _ in range(concurrency)))
        return (time.process_time() - start) / count * 1e6

    results = {
        "unary c=1": await cpu(calls, lambda: provider.complete(unary)),
        "unary c=16": await cpu(calls, lambda: provider.complete(unary), concurrency=16),
        "stream 16": await cpu(streams, lambda: one_stream(streamed)),
    }
    results["stream 16 paced"] = await cpu(streams // 4, lambda: one_stream(streamed, paced))
    long = await cpu(streams // 4, lambda: one_stream(long_stream))
    results["per event"] = (long - results["stream 16"]) / 240
    results["per paced event"] = (results["stream 16 paced"] - results["unary c=1"]) / 16
    results.update(await _transport_only(http_module, base, paced_base, calls, streams))
    await client.aclose()
    return results


async def _transport_only(http_module: Any, base: str, paced_base: str, calls: int, streams: int,
                          ) -> dict[str, float]:
    """CPU of the client and SSE parser alone: POST, read the JSON body; POST, iterate the events."""
    from gateway_core.providers.sse import iter_sse

    unary_body = b'{"model":"bench-model","messages":[{"role":"user","content":"hi"}]}'
    stream_body = b'{"model":"chunks-256","messages":[{"role":"user","content":"hi"}],"stream":true}'
    short_body = b'{"model":"chunks-16","messages":[{"role":"user","content":"hi"}],"stream":true}'
    paced_body = b'{"model":"bench-model","messages":[{"role":"user","content":"hi"}],"stream":true}'
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    client = http_module.make_http_client()
    new = hasattr(http_module, "CallTimeouts") or "UpstreamClient" in type(client).__name__

    async def post_read(body: bytes, at: str = base) -> int:
        url = f"{at}/chat/completions"
        if new:
            from gateway_core.providers.http_client import CallTimeouts

            response = await client.post(url, body, headers, CallTimeouts(10.0, 60.0, 60.0, 10.0))
            await response.read(1 << 20, truncate=False)
            await response.aclose()
            return 0
        response = await client.post(url, content=body, headers=headers)
        return len(response.content)

    async def post_events(body: bytes, at: str = base) -> int:
        url = f"{at}/chat/completions"
        count = 0
        if new:
            from gateway_core.providers.http_client import CallTimeouts

            response = await client.post(url, body, headers, CallTimeouts(10.0, 60.0, 60.0, 10.0))
            async for _ in iter_sse(response):
                count += 1
            await response.aclose()
            return count
        async with client.stream("POST", url, content=body, headers=headers) as response:
            async for _ in iter_sse(response):
                count += 1
        return count

    async def cpu(count: int, make: Any) -> float:
        for _ in range(max(count // 20, 5)):
            await make()
        start = time.process_time()
        for _ in range(count):
            await make()
        return (time.process_time() - start) / count * 1e6

    unary = await cpu(calls, lambda: post_read(unary_body))
    short = await cpu(streams, lambda: post_events(short_body))
    long = await cpu(streams // 4, lambda: post_events(stream_body))
    paced = await cpu(streams // 4, lambda: post_events(paced_body, paced_base))
    await client.aclose()
    return {
        "transport unary": unary,
        "transport stream 16": short,
        "transport per event": (long - short) / 240,
        "transport per paced event": (paced - unary) / 16,
    }


# --- driver side ---


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _baseline_revision() -> str:
    """The commit before gateway_core/providers/http_client.py first appeared."""
    added = subprocess.run(
        ["git", "-C", str(ROOT), "log", "--diff-filter=A", "--format=%H", "--",
         "gateway_core/providers/http_client.py"], capture_output=True, text=True, check=True,
    ).stdout.split()
    if not added:
        raise SystemExit("no baseline: http_client.py has no history here; pass --baseline REV")
    return added[-1] + "^"


def _extract(revision: str, into: Path) -> None:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "gateway_core"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def _run_worker(tree: Path, ports: tuple[int, int], calls: int, streams: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, __file__, "--worker", "--port", str(ports[0]), "--paced-port",
                          str(ports[1]), "--calls", str(calls), "--streams", str(streams)],
                         env=env, capture_output=True, text=True, cwd=tree)
    if out.returncode != 0:
        raise SystemExit(f"worker failed:\n{out.stderr[-3000:]}")
    results: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=400)
    parser.add_argument("--baseline", help="git revision of the old client (default: found from history)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--paced-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        print(json.dumps(asyncio.run(_worker(args.port, args.paced_port, args.calls, args.streams))))
        return
    ports = (_free_port(), _free_port())
    fake = [sys.executable, str(ROOT / "bench" / "fake_upstream.py")]
    upstreams = [subprocess.Popen([*fake, "--port", str(ports[0])]),
                 subprocess.Popen([*fake, "--port", str(ports[1]), "--token-delay-ms", "1"])]
    try:
        time.sleep(1.0)
        revision = args.baseline or _baseline_revision()
        with tempfile.TemporaryDirectory() as folder:
            old_tree = Path(folder)
            _extract(revision, old_tree)
            samples: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
            for round_ in range(args.rounds):
                for name, tree in (("old", old_tree), ("new", ROOT)):
                    for key, value in _run_worker(tree, ports, args.calls, args.streams).items():
                        samples[name].setdefault(key, []).append(value)
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        print(f"old = gateway_core at {revision}; new = this checkout; "
              f"median of {args.rounds} interleaved rounds, us of CPU")
        print(f"{'':>24} {'old':>9} {'new':>9}")
        for key in samples["new"]:
            old, new = statistics.median(samples["old"][key]), statistics.median(samples["new"][key])
            print(f"{key:>24} {old:9.1f} {new:9.1f}")
    finally:
        for upstream in upstreams:
            upstream.terminate()
            upstream.wait()


if __name__ == "__main__":
    main()
