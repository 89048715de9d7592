"""Tollgate's benchmark: the gateway against a direct upstream, in one bounded run.

Starts bench/fake_upstream.py, `tollgate serve` (real config: auth, hold,
settle, usage record, durable SQLite in a temporary directory) and, for each
of non-streaming and streaming (16 chunks) at concurrency 1, 16 and 64, runs
bench/loadgen.py twice: straight at the upstream (the baseline) and through
the gateway. The gateway is pinned to CPU 0; the upstream and the load
generator to the other CPUs, so the gateway's CPU is separable.

CPU per request is utime+stime from /proc/<pid>/stat of the gateway process
and every descendant, over the whole load window, divided by the requests
completed in it. Peak RSS is VmHWM of the same processes.

    .venv/bin/python bench/run.py [--quick] [--label after] [--token-delay-ms 0] [--topology serve|split]

Writes bench/results/<label>.json and bench/results/<label>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")
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

[[models]]
name = "bench-model"
routes = [{{ provider = "upstream", model = "bench-model" }}]
input_price = 0.15
output_price = 0.60
max_output_tokens = 64
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpus() -> tuple[set[int], set[int]]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    return {cpus[0]}, set(cpus[1:])


def _family(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _cpu_seconds(pid: int) -> float:
    total = 0
    for p in _family(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def _peak_rss_mb(pid: int) -> float:
    total = 0
    for p in _family(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        total += int(match.group(1)) if match else 0
    return total / 1024


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def _loadgen(port: int, key: str, concurrency: int, stream: bool, seconds: float, warmup: float, cpus: set[int]) -> dict:
    cmd = [
        sys.executable, str(BENCH / "loadgen.py"), "--port", str(port), "--key", key,
        "--concurrency", str(concurrency), "--seconds", str(seconds), "--warmup", str(warmup),
    ]
    if stream:
        cmd.append("--stream")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 30 s instead of about 2 minutes")
    parser.add_argument("--label", default="latest")
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--keep", action="store_true", help="leave the gateway running at the end (for profiling)")
    parser.add_argument(
        "--topology", choices=("serve", "split"), default="serve",
        help="serve: one `tollgate serve` process (facade calls the core in-process); "
        "split: `tollgate core` + `tollgate facade` processes with the gRPC hop between them",
    )
    args = parser.parse_args()
    seconds, warmup = (1.5, 0.5) if args.quick else (6.0, 1.0)
    gateway_cpus, other_cpus = _cpus()
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    ports = {"http": _free_port(), "grpc": _free_port(), "upstream": _free_port()}
    (tmp / "tollgate.toml").write_text(CONFIG.format(db=tmp / "bench.db", **ports))

    upstream = subprocess.Popen(
        [sys.executable, str(BENCH / "fake_upstream.py"), "--port", str(ports["upstream"]),
         "--token-delay-ms", str(args.token_delay_ms)],
        preexec_fn=lambda: os.sched_setaffinity(0, other_cpus),
    )
    tollgate = str(Path(sys.executable).parent / "tollgate")
    config = str(tmp / "tollgate.toml")
    gateway = subprocess.Popen(
        [tollgate, "serve" if args.topology == "serve" else "core", "--config", config],
        cwd=tmp, stdout=subprocess.PIPE, text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, gateway_cpus),
    )
    # split: the HTTP facade is its own process, calling the core over loopback gRPC.
    facade: subprocess.Popen | None = None
    results = []
    try:
        _wait_port(ports["upstream"], upstream)
        key = ""
        assert gateway.stdout is not None
        for line in gateway.stdout:
            if line.strip().startswith("sk-"):
                key = line.strip()
                break
        if not key:
            raise RuntimeError("no demo key printed")
        if args.topology == "split":
            facade = subprocess.Popen(
                [tollgate, "facade", "--core", f"127.0.0.1:{ports['grpc']}", "--config", config],
                cwd=tmp, preexec_fn=lambda: os.sched_setaffinity(0, gateway_cpus),
            )
        gateway_pids = [gateway.pid] + ([facade.pid] if facade else [])
        _wait_port(ports["http"], facade or gateway)
        for stream in (False, True):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                direct = _loadgen(ports["upstream"], "sk-direct", concurrency, stream, seconds, warmup, other_cpus)
                before = sum(_cpu_seconds(pid) for pid in gateway_pids)
                through = _loadgen(ports["http"], key, concurrency, stream, seconds, warmup, other_cpus)
                cpu = sum(_cpu_seconds(pid) for pid in gateway_pids) - before
                # CPU covers warmup + measured window; requests scale by the same share.
                total = through["requests"] * (seconds + warmup) / seconds
                row = {
                    "mode": "stream" if stream else "unary",
                    "concurrency": concurrency,
                    "direct": direct,
                    "gateway": through,
                    "rps": through["rps"],
                    "added_p50_ms": through["p50_ms"] - direct["p50_ms"],
                    "added_p99_ms": through["p99_ms"] - direct["p99_ms"],
                    "added_ttft_p50_ms": through["ttft_p50_ms"] - direct["ttft_p50_ms"],
                    "cpu_ms_per_request": 1000 * cpu / total if total else float("nan"),
                    "errors": through["errors"],
                }
                results.append(row)
                print(_line(row), flush=True)
        peak = sum(_peak_rss_mb(pid) for pid in gateway_pids)
        if args.keep:
            print(f"gateway pid {gateway.pid} on http port {ports['http']}, key {key}; Ctrl-C to stop")
            signal.pause()
    finally:
        procs = [p for p in (facade, gateway, upstream) if p is not None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    report = {
        "label": args.label,
        "quick": args.quick,
        "topology": args.topology,
        "token_delay_ms": args.token_delay_ms,
        "gateway_cpus": sorted(gateway_cpus),
        "load_cpus": sorted(other_cpus),
        "peak_rss_mb": peak,
        "rows": results,
    }
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{args.label}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = _table(report)
    (out_dir / f"{args.label}.md").write_text(table)
    print(table)


HEADER = "| mode | conc | req/s | direct req/s | added p50 ms | added p99 ms | added TTFT p50 ms | CPU ms/req | errors |"


def _line(row: dict) -> str:
    return (
        f"| {row['mode']} | {row['concurrency']} | {row['rps']:.0f} | {row['direct']['rps']:.0f} | "
        f"{row['added_p50_ms']:.2f} | {row['added_p99_ms']:.2f} | {row['added_ttft_p50_ms']:.2f} | "
        f"{row['cpu_ms_per_request']:.2f} | {row['errors']} |"
    )


def _table(report: dict) -> str:
    lines = [f"Label `{report['label']}` ({report.get('topology', 'serve')}); "
             f"gateway on CPU {report['gateway_cpus']}, load on {report['load_cpus']}; "
             f"peak RSS {report['peak_rss_mb']:.0f} MB", "", HEADER, "|" + "---|" * 9]
    lines += [_line(row) for row in report["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
