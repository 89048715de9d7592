"""Scaling shape (issue #6 part 3): CPU per request and memory vs prompt size and stream length,
and memory over a long run.

    .venv/bin/python bench/scaling.py              # about 3 minutes
    .venv/bin/python bench/scaling.py --quick      # about 1 minute

Same set-up as bench/run.py (fake upstream and load generator on one CPU,
`tollgate serve` pinned to the other), concurrency 16 throughout:
- non-streaming with prompts of 1 KB, 32 KB and 256 KB;
- streaming with 16, 256 and 2,048 content chunks (the fake upstream's model "chunks-N");
- a soak: the 1 KB non-streaming load repeated, RSS (VmRSS, not the peak) after each round.
Reports CPU ms/request and the gateway's RSS after each row; results in
bench/results/<label>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from run import BENCH, CONFIG, _cpu_seconds, _cpus, _family, _free_port, _wait_port

PROMPT_BYTES = (1024, 32 * 1024, 256 * 1024)
STREAM_CHUNKS = (16, 256, 2048)
CONCURRENCY = 16
MODELS = "".join(
    f"""
[[models]]
name = "bench-chunks-{n}"
routes = [{{{{ provider = "upstream", model = "chunks-{n}" }}}}]
input_price = 0.15
output_price = 0.60
max_output_tokens = 4096
"""
    for n in STREAM_CHUNKS
)


def _rss_mb(pid: int) -> float:
    total = 0
    for p in _family(pid):
        try:
            match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
        except OSError:
            continue
        total += int(match.group(1)) if match else 0
    return total / 1024


def _load(port: int, key: str, seconds: float, cpus: set[int], *, stream: bool, model: str,
          prompt_bytes: int, max_tokens: int) -> dict:
    cmd = [sys.executable, str(BENCH / "loadgen.py"), "--port", str(port), "--key", key,
           "--concurrency", str(CONCURRENCY), "--seconds", str(seconds), "--warmup", "0",
           "--model", model, "--prompt-bytes", str(prompt_bytes), "--max-tokens", str(max_tokens)]
    if stream:
        cmd.append("--stream")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--label", default="scaling")
    parser.add_argument("--soak-rounds", type=int, default=None)
    args = parser.parse_args()
    seconds = 3.0 if args.quick else 8.0
    soak_rounds = args.soak_rounds or (4 if args.quick else 10)
    gateway_cpus, other_cpus = _cpus()
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-scaling-"))
    ports = {"http": _free_port(), "grpc": _free_port(), "upstream": _free_port()}
    (tmp / "tollgate.toml").write_text(CONFIG.format(db=tmp / "bench.db", **ports) + MODELS.format())
    upstream = subprocess.Popen(
        [sys.executable, str(BENCH / "fake_upstream.py"), "--port", str(ports["upstream"])],
        preexec_fn=lambda: os.sched_setaffinity(0, other_cpus),
    )
    gateway = subprocess.Popen(
        [str(Path(sys.executable).parent / "tollgate"), "serve", "--config", str(tmp / "tollgate.toml")],
        cwd=tmp, stdout=subprocess.PIPE, text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, gateway_cpus),
    )
    rows: list[dict] = []

    def measure(name: str, **load: object) -> None:
        before = _cpu_seconds(gateway.pid)
        result = _load(ports["http"], key, seconds, other_cpus, **load)  # type: ignore[arg-type]
        cpu = _cpu_seconds(gateway.pid) - before
        done = result["requests"] + result["errors"]
        row = {"scenario": name, "rps": result["rps"], "p50_ms": result["p50_ms"],
               "cpu_ms_per_request": 1000 * cpu / done if done else float("nan"),
               "rss_mb": _rss_mb(gateway.pid), "errors": result["errors"]}
        rows.append(row)
        print(_line(row), flush=True)

    try:
        _wait_port(ports["upstream"], upstream)
        assert gateway.stdout is not None
        key = next((line.strip() for line in gateway.stdout if line.strip().startswith("sk-")), "")
        if not key:
            raise RuntimeError("no demo key printed")
        _wait_port(ports["http"], gateway)
        print(HEADER, flush=True)
        rows.append({"scenario": "idle after start", "rps": 0.0, "p50_ms": 0.0, "cpu_ms_per_request": 0.0,
                     "rss_mb": _rss_mb(gateway.pid), "errors": 0})
        for size in PROMPT_BYTES:
            measure(f"unary, prompt {size // 1024} KB", stream=False, model="bench-model", prompt_bytes=size,
                    max_tokens=64)
        for chunks in STREAM_CHUNKS:
            measure(f"stream, {chunks} chunks", stream=True, model=f"bench-chunks-{chunks}", prompt_bytes=0,
                    max_tokens=chunks)
        for round_ in range(1, soak_rounds + 1):
            measure(f"soak round {round_}, unary 1 KB", stream=False, model="bench-model", prompt_bytes=1024,
                    max_tokens=64)
    finally:
        for proc in (gateway, upstream):
            proc.send_signal(signal.SIGTERM)
        for proc in (gateway, upstream):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    report = {"label": args.label, "quick": args.quick, "concurrency": CONCURRENCY, "seconds_per_row": seconds,
              "gateway_cpus": sorted(gateway_cpus), "rows": rows}
    (out_dir / f"{args.label}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = "\n".join([f"Label `{args.label}`; concurrency {CONCURRENCY}, {seconds:g} s per row", "", HEADER,
                       "|---|---|---|---|---|---|", *(_line(r) for r in rows)]) + "\n"
    (out_dir / f"{args.label}.md").write_text(table)
    print(table)


HEADER = "| scenario | req/s | p50 ms | CPU ms/req | RSS MB after | errors |"


def _line(row: dict) -> str:
    return (f"| {row['scenario']} | {row['rps']:.0f} | {row['p50_ms']:.1f} | {row['cpu_ms_per_request']:.2f} | "
            f"{row['rss_mb']:.0f} | {row['errors']} |")


if __name__ == "__main__":
    main()
