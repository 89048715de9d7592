"""Instructions per call of the request path's pieces (valgrind callgrind): before/after comparable.

    .venv/bin/python bench/instructions.py                               # every case, this tree
    .venv/bin/python bench/instructions.py --compare /tmp/base           # A/B against another source tree
    .venv/bin/python bench/instructions.py --cases attempt_line,access_line

Each case (bench/instruction_cases.py) builds what one piece of a unary request
works on (the bench's request body, a core request, an answer, a log line's
fields) and returns a function that runs that piece once. The case runs in a
child process under callgrind twice, with N and 2N calls; the difference of the
two totals over N is the instructions of one call, whatever start-up cost.
Counts are the same on a busy machine as on a quiet one (hash seed fixed),
so a change of a few hundred instructions shows; wall time here is ~50x slower.
A tree given with --compare needs only to be a checkout of Tollgate whose
functions the cases call (e.g. `git archive <commit> | tar -x -C /tmp/base`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _total(tree: Path, case: str, calls: int, tmp: str) -> int:
    out = os.path.join(tmp, f"callgrind-{case}-{calls}-{abs(hash(str(tree)))}")
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{Path(__file__).parent}", "PYTHONHASHSEED": "0",
           "PYTHONMALLOC": "malloc"}
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
         sys.executable, __file__, "--child", case, str(calls)],
        env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    with open(out) as f:
        return next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:")))


def _child(case: str, calls: int) -> None:
    import instruction_cases

    async def calls_on_a_loop() -> None:  # as in the gateway: log lines are batched while a loop runs
        run = getattr(instruction_cases, case)()
        for _ in range(50):  # caches, lazily built tables
            run()
        for _ in range(calls):
            run()

    asyncio.run(calls_on_a_loop())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", action="append", default=[], metavar="TREE")
    parser.add_argument("--cases", default="", help="comma-separated names (default: all)")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    import instruction_cases

    cases = args.cases.split(",") if args.cases else list(instruction_cases.CASES)
    trees = [ROOT] + [Path(t).resolve() for t in args.compare]
    print(f"instructions per call (callgrind, ({2 * args.calls} - {args.calls}) calls / {args.calls})")
    print(f"{'case':<24}" + "".join(f"{str(t)[-28:]:>30}" for t in trees))
    with tempfile.TemporaryDirectory(prefix="instructions-") as tmp:
        for case in cases:
            row = []
            for tree in trees:
                try:
                    small = _total(tree, case, args.calls, tmp)
                    large = _total(tree, case, 2 * args.calls, tmp)
                    row.append(f"{(large - small) / args.calls:>30,.0f}")
                except subprocess.CalledProcessError:
                    row.append(f"{'(fails)':>30}")
            print(f"{case:<24}" + "".join(row), flush=True)


if __name__ == "__main__":
    main()
