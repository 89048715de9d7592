"""CPU of the core's own work per chat request and per streamed chunk, on the event-loop thread.

    .venv/bin/python bench/micro_core.py            # about 20 s
    .venv/bin/python bench/micro_core.py --rounds 7 --requests 600

The real core (`start_core`: auth, limits, routing, the chat pipeline, hold and
settle on a real SQLite file, usage records, access and upstream_attempt log
lines formatted as JSON, Prometheus metrics) is called through the in-process
channel `tollgate serve` uses. Only the upstream's HTTP is replaced: the
configured `openai` provider's `complete`/`stream` build the real upstream
JSON body (translate.prepare_request + orjson) and translate canned upstream
JSON (the bodies bench/fake_upstream.py sends) into protobuf with the real
translator, without a socket. So the numbers are the core's slice and nothing
else: no facade, no httpx.

Reported, median and best over rounds (CPU time, not wall time, so a busy machine only
adds noise):
- loop thread: `time.thread_time()` of the event-loop thread per unary request,
  per 16-chunk stream, and per streamed chunk (the difference between 256- and
  16-chunk streams, divided by 240);
- DB threads: process CPU minus the loop thread's (the SQLite worker threads).

Works against older checkouts too (it only uses public entry points), so a
before/after is: `PYTHONPATH=<old tree> .venv/bin/python bench/micro_core.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from gateway_core.config import parse_settings
from gateway_core.observability.log_format import configure_logging
from gateway_core.observability.settings import LoggingSettings
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc
from gateway_core.providers.base import UpstreamCall
from gateway_core.providers.openai import translate
from gateway_core.server import start_core
from http_facade.middleware import new_request_id

MODEL = "bench-model"
_PREFIX = '{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-model",'
FIRST = (_PREFIX + '"choices":[{"index":0,"delta":{"role":"assistant","content":"tok "},"finish_reason":null}]}').encode()
TOKEN = (_PREFIX + '"choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}').encode()
FINISH = (_PREFIX + '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}').encode()
COMPLETION = (
    '{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model",'
    '"choices":[{"index":0,"message":{"role":"assistant","content":"' + "tok " * 16 + '"},'
    '"finish_reason":"stop","logprobs":null}],'
    '"usage":{"prompt_tokens":12,"completion_tokens":16,"total_tokens":28}}'
).encode()


def _usage(chunks: int) -> bytes:
    return (_PREFIX + '"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":%d,"total_tokens":%d}}'
            % (chunks, chunks + 12)).encode()


class TranslatingProvider:
    """The configured provider's translation without its HTTP: request body built and encoded,
    canned upstream JSON parsed and translated, as OpenAIProvider does around its transport."""

    def __init__(self, name: str, dialect: Any) -> None:
        self.name = name
        self._dialect = dialect

    async def complete(self, call: UpstreamCall) -> chat_pb2.CreateChatCompletionResponse:
        orjson.dumps(translate.prepare_request(call, stream=False, dialect=self._dialect).body)
        return translate.from_response(orjson.loads(COMPLETION), call, provider=self.name)

    def stream(self, call: UpstreamCall) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        if _BatchedChunks is not None:  # a tree whose streams hand on a network read's chunks together
            return _CannedBurst(self, call)
        return self._chunks(call)

    async def _chunks(self, call: UpstreamCall) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        orjson.dumps(translate.prepare_request(call, stream=True, dialect=self._dialect).body)
        chunks = _chunks_of(call.upstream_model)
        translator = translate.StreamTranslator(call, provider=self.name)
        events = [FIRST, *([TOKEN] * (chunks - 1)), FINISH, _usage(chunks)]
        for data in events:
            for chunk in translator.feed(orjson.loads(data)):
                yield chunk
        for chunk in translator.finish():
            yield chunk

    async def aclose(self) -> None:
        return None


try:  # trees since streams are read a batch at a time (gateway_core/providers/chunk_batches.py)
    from gateway_core.providers.chunk_batches import BatchedChunks as _BatchedChunks
except ImportError:
    _BatchedChunks = None  # type: ignore[assignment,misc]


if _BatchedChunks is not None:

    class _CannedBurst(_BatchedChunks):  # type: ignore[misc,valid-type]
        """The whole canned stream as one batch, as when it arrives in one network read (a burst)."""

        __slots__ = ("_provider", "_call", "_done")

        def __init__(self, provider: TranslatingProvider, call: UpstreamCall) -> None:
            super().__init__()
            self._provider, self._call, self._done = provider, call, False

        async def next_batch(self) -> list[chat_pb2.StreamChatCompletionResponse] | None:
            if self._done:
                return None
            self._done = True
            call = self._call
            orjson.dumps(translate.prepare_request(call, stream=True, dialect=self._provider._dialect).body)
            chunks = _chunks_of(call.upstream_model)
            translator = translate.StreamTranslator(call, provider=self._provider.name)
            out: list[chat_pb2.StreamChatCompletionResponse] = []
            for data in [FIRST, *([TOKEN] * (chunks - 1)), FINISH, _usage(chunks)]:
                out += translator.feed(orjson.loads(data))
            return out + translator.finish()

        async def aclose(self) -> None:
            self._done = True


def _chunks_of(upstream_model: str) -> int:
    return int(upstream_model.removeprefix("chunks-")) if upstream_model.startswith("chunks-") else 16


def _stub_ledger_writes(core: Any) -> None:
    """--db-stub: the hold and settle transactions answer at once on the loop, without the DB threads
    (whether a tree runs them through Database.run or Database.run_lean).

    What is left is the core's own loop work (the brief's "core loop CPU"): every
    other step is real, auth lookups and account limits still go to SQLite (cached).
    """
    from types import SimpleNamespace

    from gateway_core.metering.outcome import Settlement

    database = core.store.db
    real_run = database.run

    async def run(fn: Any, *, write: bool = False) -> Any:
        name = getattr(getattr(fn, "func", None), "__name__", "")
        if name == "_create_hold":
            request = fn.keywords["request"]
            return SimpleNamespace(request_id=request.request_id, account_id=request.account_id,
                                   api_key_id=request.api_key_id, amount_micros=request.amount_micros)
        if name == "settle_hold":
            outcome = fn.keywords["outcome"]
            return Settlement(fn.keywords["request_id"], max(outcome.cost_micros, 0), 0, 0, False)
        return await real_run(fn, write=write)

    database.run = run

    # The money path's lean statements (store/holds.py through Database.run_lean), where a tree has them:
    # without this, --db-stub stubbed nothing once hold and settle moved there.
    real_lean = getattr(database, "run_lean", None)

    async def run_lean(fn: Any, *, durable: bool = True) -> Any:
        name = getattr(getattr(fn, "func", None), "__name__", "")
        if name == "reserve":
            request = fn.keywords["request"]
            return SimpleNamespace(request_id=request.request_id, account_id=request.account_id,
                                   api_key_id=request.api_key_id, amount_micros=request.amount_micros)
        if name == "settle" and "outcome" in fn.keywords:
            outcome = fn.keywords["outcome"]
            return Settlement(fn.keywords["request_id"], max(outcome.cost_micros, 0), 0, 0, False)
        assert real_lean is not None
        return await real_lean(fn, durable=durable)

    if real_lean is not None:
        database.run_lean = run_lean


def _settings(directory: Path) -> Any:
    routes = [("bench-model", "bench-model"), ("stream-16", "chunks-16"), ("stream-256", "chunks-256")]
    return parse_settings({
        "database": {"url": f"sqlite:///{directory / 'bench.db'}"},
        "admin": {"token": "bench-admin-token-0123456789"},
        "keys": {"pepper": "bench-pepper-0123456789abcdef"},
        "providers": [{"name": "upstream", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
                       "api_key": "sk-upstream-bench"}],
        "models": [
            {"name": name, "routes": [{"provider": "upstream", "model": upstream}],
             "input_price": 0.15, "output_price": 0.60, "max_output_tokens": 64}
            for name, upstream in routes
        ],
    }, {})


def _request_id() -> str:
    """What the facade sends as x-request-id, made by the facade's own generator."""
    return new_request_id()


async def _measure(stub: Any, kind: str, count: int, key: str) -> tuple[float, float]:
    """(loop-thread CPU, whole-process CPU) seconds per call, over count calls of one kind."""
    model = {"unary": MODEL, "stream16": "stream-16", "stream256": "stream-256"}[kind]
    request_type = chat_pb2.CreateChatCompletionRequest if kind == "unary" else chat_pb2.StreamChatCompletionRequest
    request = request_type(model=model, max_tokens=64)
    request.messages.add(role=1, content="Say something short.")  # ROLE_USER
    loop_start, process_start = time.thread_time(), time.process_time()
    for _ in range(count):
        metadata = (("authorization", f"Bearer {key}"), ("x-request-id", _request_id()))
        if kind == "unary":
            await stub.CreateChatCompletion(request, metadata=metadata, timeout=600)
        else:
            call = stub.StreamChatCompletion(request, metadata=metadata, timeout=600)
            async for _ in call:
                pass
    # Let settlements and background work of the last call land inside the window.
    await asyncio.sleep(0.01)
    return (time.thread_time() - loop_start) / count, (time.process_time() - process_start) / count


async def main(args: argparse.Namespace) -> None:
    if not args.log_to_stderr:  # the server's own log path (stderr), with stderr itself sent nowhere
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the run
    with tempfile.TemporaryDirectory() as directory:
        settings = _settings(Path(directory))
        # JSON lines to stderr, exactly as `tollgate serve` logs.
        configure_logging(LoggingSettings(level="info", format="json"))
        core = await start_core(settings, address="127.0.0.1:0", metrics_address="")
        try:
            created = await core.store.create_first_account(
                "bench", pepper=settings.key_pepper, credit_micros=10**15, request_id="bench-credit", key_name="bench"
            )
            assert created is not None
            key = created[2]
            inner = core.providers["upstream"]
            fake = TranslatingProvider("upstream", translate.dialect_for(settings.providers["upstream"]))
            inner.complete = fake.complete  # type: ignore[method-assign]
            inner.stream = fake.stream  # type: ignore[method-assign]
            if args.db_stub:
                _stub_ledger_writes(core)
            stub = chat_pb2_grpc.ChatServiceStub(core.local.channel())
            for kind in args.kinds.split(","):  # warm-up: caches, first-call imports
                await _measure(stub, kind, 30, key)
            if args.profile:
                await _profile(stub, args.profile, args.requests, key)
                return
            results: dict[str, list[tuple[float, float]]] = {"unary": [], "stream16": [], "stream256": []}
            counts = {"unary": args.requests, "stream16": args.requests // 2, "stream256": max(args.requests // 10, 10)}
            for _ in range(args.rounds):
                for kind in args.kinds.split(","):
                    results[kind].append(await _measure(stub, kind, counts[kind], key))
        finally:
            await core.stop(1.0)
    print("median of rounds:")
    _report(results)
    print("best round (least disturbed by other load):")
    _report(results, best=True)


async def _profile(stub: Any, kind: str, count: int, key: str) -> None:
    """cProfile of the loop thread over count calls of one kind (the DB threads are not profiled)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile(time.thread_time)  # CPU of this thread, not wall time
    profiler.enable()
    await _measure(stub, kind, count, key)
    profiler.disable()
    pstats.Stats(profiler).sort_stats(os.environ.get("MICRO_SORT", "tottime")).print_stats(int(os.environ.get("MICRO_ROWS", "45")))
    if os.environ.get("MICRO_DUMP"):
        profiler.dump_stats(os.environ["MICRO_DUMP"])


def _report(results: dict[str, list[tuple[float, float]]], best: bool = False) -> None:
    pick = min if best else statistics.median

    def median(kind: str, index: int) -> float:
        return pick(r[index] for r in results[kind])

    if not all(results.values()):  # some kinds not measured (--kinds): raw medians only
        for kind, rows in results.items():
            if rows:
                print(f"{kind}: loop thread {median(kind, 0) * 1e6:7.0f} us   all threads {median(kind, 1) * 1e6:7.0f} us")
        return
    unary_loop, unary_all = median("unary", 0), median("unary", 1)
    s16_loop, s16_all = median("stream16", 0), median("stream16", 1)
    per_chunk = pick(
        (big[0] - small[0]) / 240 for big, small in zip(results["stream256"], results["stream16"], strict=True)
    )
    print(f"unary request : loop thread {unary_loop * 1e6:7.0f} us   DB/other threads {(unary_all - unary_loop) * 1e6:6.0f} us")
    print(f"16-chunk stream: loop thread {s16_loop * 1e6:7.0f} us   DB/other threads {(s16_all - s16_loop) * 1e6:6.0f} us")
    print(f"per streamed chunk (256 vs 16 chunks): loop thread {per_chunk * 1e6:5.1f} us")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="measurement rounds; medians are reported")
    parser.add_argument("--requests", type=int, default=400, help="unary requests per round (streams: half)")
    parser.add_argument("--db-stub", action="store_true",
                        help="answer hold/settle without the database: the core's own loop CPU only")
    parser.add_argument("--kinds", default="unary,stream16,stream256", help="which calls to measure (comma-separated)")
    parser.add_argument("--profile", choices=("unary", "stream16", "stream256"),
                        help="instead of measuring, print a cProfile of the loop thread for this kind")
    parser.add_argument("--log-to-stderr", action="store_true", help="log lines to stderr instead of /dev/null")
    return parser.parse_args()


if __name__ == "__main__":
    logging.captureWarnings(True)
    asyncio.run(main(_arguments()))
