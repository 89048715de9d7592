"""Instructions per request of a whole `tollgate serve` (callgrind, every thread), per kind and source tree.

    .venv/bin/python bench/callgrind_stream.py /tmp/base .          # about 3 minutes per tree
    .venv/bin/python bench/callgrind_stream.py --kinds unary,burst16 /tmp/base /tmp/other .

The gateway and the fake upstream are bench/micro_stream.py's (the real facade
and core in-process, SQLite file, JSON logs, metrics; kinds unary, burstN,
spacedN), but the gateway runs under valgrind and one request is in flight at a
time: user-space instructions do not move with the other work on a shared
machine as CPU time does, so differences of a few percent show. Kernel work
(socket writes, fsync) is not in them. Trees run one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import micro_stream as ms  # noqa: E402 - bench/ is put on the path just above

COUNTS = {"unary": 40, "burst1": 40, "burst16": 40, "burst256": 10, "spaced16": 20, "spaced64": 10}


class CallgrindGateway:
    """One `tollgate serve` of a source tree under callgrind, with its demo key."""

    def __init__(self, tree: Path, upstream_port: int, workdir: Path) -> None:
        self.port = ms._free_port()
        self.out = str(workdir / "callgrind.out")
        workdir.mkdir(parents=True)
        models = "".join(ms.MODEL.format(name=name) for name in ("bench-model", *ms.KINDS[1:]))
        config = workdir / "tollgate.toml"
        config.write_text(ms.CONFIG.format(http=self.port, grpc=ms._free_port(), db=workdir / "bench.db",
                                           upstream=upstream_port, models=models))
        # The system allocator, so that valgrind sees every allocation as pymalloc would hide them.
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONMALLOC": "malloc"}
        code = "import sys; from gateway_core.cli import main; sys.argv[0] = 'tollgate'; main()"
        self.proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}", "--dump-instr=no",
             sys.executable, "-c", code, "serve", "--config", str(config)],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        self.key = next((line.strip() for line in self.proc.stdout if line.strip().startswith("sk-")), "")
        if not self.key:
            raise RuntimeError(f"no demo key printed by the gateway of {tree}")
        ms._wait_port(self.port, self.proc, timeout=600)  # type: ignore[arg-type]

    def instructions(self, kind: str, count: int) -> float:
        """Thousands of user-space instructions per request of one kind (after a warm-up)."""
        asyncio.run(ms._load(self.port, self.key, kind, max(count // 5, 5), 1))
        subprocess.run(["callgrind_control", "--zero", str(self.proc.pid)], check=True, capture_output=True)
        asyncio.run(ms._load(self.port, self.key, kind, count, 1))
        time.sleep(0.5)  # the last settlement and log lines land inside the window
        before = set(glob.glob(self.out + "*"))
        subprocess.run(["callgrind_control", "--dump", str(self.proc.pid)], check=True, capture_output=True)
        total = 0
        for path in set(glob.glob(self.out + "*")) - before:
            with open(path) as f:
                total += next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:")))
        return total / count / 1e3

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", help="source trees (checkouts of Tollgate) to measure")
    parser.add_argument("--kinds", default="unary,burst16,burst256")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    upstream_port = ms._free_port()
    upstream = subprocess.Popen([sys.executable, ms.__file__, "--upstream", str(upstream_port)])
    print("thousands of user-space instructions per request (callgrind, all threads, one request at a time)")
    try:
        ms._wait_port(upstream_port, upstream)  # type: ignore[arg-type]
        with tempfile.TemporaryDirectory(prefix="callgrind-stream-") as tmp:
            for number, tree in enumerate(args.trees):
                gateway = CallgrindGateway(Path(tree).resolve(), upstream_port, Path(tmp) / f"g{number}")
                try:
                    row = {kind: gateway.instructions(kind, COUNTS[kind]) for kind in kinds}
                finally:
                    gateway.stop()
                extra = ""
                if "burst16" in row and "burst256" in row:
                    extra = f"  per extra chunk {(row['burst256'] - row['burst16']) / 240:.1f}k"
                print(f"  {tree}: " + "  ".join(f"{kind} {value:,.0f}k" for kind, value in row.items()) + extra,
                      flush=True)
    finally:
        upstream.terminate()
        upstream.wait(10)


if __name__ == "__main__":
    main()
