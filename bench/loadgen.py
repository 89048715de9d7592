"""A closed-loop HTTP/1.1 load generator: N keep-alive connections, one request in flight on each.

Raw asyncio streams (uvloop when installed), one pre-built request, just
enough response parsing for Content-Length and chunked bodies. Prints one
JSON object: completed requests, errors, wall seconds, latency and
time-to-first-token percentiles in milliseconds.

    python bench/loadgen.py --port 8080 --path /v1/chat/completions --key sk-... \
        --concurrency 16 --seconds 5 [--stream] [--warmup 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


def _request(host: str, port: int, path: str, key: str, stream: bool, model: str = "bench-model",
             prompt_bytes: int = 0, max_tokens: int = 64) -> bytes:
    # A prompt of about prompt_bytes bytes of short English-like words (bench/scaling.py).
    content = ("Say something short. " * (prompt_bytes // 21 + 1))[:prompt_bytes] if prompt_bytes else "Say something short."
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "stream": stream,
        },
        separators=(",", ":"),
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {key}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, float, float]:
    """Sends one request; returns (status, latency s, time to first content s)."""
    started = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    first = 0.0
    at = lower.find(b"content-length:")
    if at >= 0:
        length = int(lower[at + 15 : lower.find(b"\r\n", at)])
        await reader.readexactly(length)
        first = time.perf_counter()
    else:  # chunked
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if not first and b'"content"' in data:
                first = time.perf_counter()
            if size == 0:
                break
    ended = time.perf_counter()
    return status, ended - started, (first or ended) - started


async def _worker(args: argparse.Namespace, request: bytes, until: float, record_after: float, out: dict) -> None:
    reader, writer = await asyncio.open_connection(args.host, args.port)
    try:
        while (now := time.perf_counter()) < until:
            status, latency, ttft = await _one(reader, writer, request)
            if now < record_after:
                continue
            if status != 200:
                out["errors"] += 1
                continue
            out["latencies"].append(latency)
            out["ttfts"].append(ttft)
    finally:
        writer.close()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def run(args: argparse.Namespace) -> dict:
    request = _request(args.host, args.port, args.path, args.key, args.stream, args.model, args.prompt_bytes,
                       args.max_tokens)
    out: dict = {"latencies": [], "ttfts": [], "errors": 0}
    start = time.perf_counter()
    record_after = start + args.warmup
    until = record_after + args.seconds
    await asyncio.gather(*(_worker(args, request, until, record_after, out) for _ in range(args.concurrency)))
    lat, ttft = out["latencies"], out["ttfts"]
    return {
        "requests": len(lat),
        "errors": out["errors"],
        "seconds": args.seconds,
        "rps": len(lat) / args.seconds,
        "p50_ms": _pct(lat, 0.50),
        "p99_ms": _pct(lat, 0.99),
        "ttft_p50_ms": _pct(ttft, 0.50),
        "ttft_p99_ms": _pct(ttft, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--key", default="sk-bench")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--model", default="bench-model")
    parser.add_argument("--prompt-bytes", type=int, default=0, help="prompt size (0: a short sentence)")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
