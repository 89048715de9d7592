"""A/B of the whole gateway: another revision and this tree, interleaved, medians per row.

This machine's speed drifts by 20-40 % over tens of minutes (see the "direct
req/s" column of any two runs), so one run of each side says little. This
runs bench/run.py for a `git archive` of --base and for this tree in turns
(base, this, base, this, ...), each side importing its own code (PYTHONPATH:
the editable install would otherwise make both sides this tree), and prints
the median of each row over the rounds.

    .venv/bin/python bench/compare.py --base 23b720d             # 3 quick rounds each, about 4 minutes
    .venv/bin/python bench/compare.py --base main~5 --rounds 5 --full
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _archive(revision: str) -> Path:
    tree = Path(tempfile.mkdtemp(prefix="tollgate-compare-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def _run(tree: Path, label: str, passthrough: list[str]) -> list[dict[str, Any]]:
    """One bench/run.py of tree (its own bench and its own code); its rows."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(
        [sys.executable, str(tree / "bench" / "run.py"), "--label", label, *passthrough],
        cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    rows: list[dict[str, Any]] = json.loads((tree / "bench" / "results" / f"{label}.json").read_text())["rows"]
    return rows


def _medians(runs: list[list[dict[str, Any]]]) -> dict[tuple[str, int], dict[str, float]]:
    by_row: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rows in runs:
        for row in rows:
            by_row.setdefault((row["mode"], row["concurrency"]), []).append(row)
    return {
        key: {
            "cpu": statistics.median(r["cpu_ms_per_request"] for r in rows),
            "rps": statistics.median(r["rps"] for r in rows),
            "direct": statistics.median(r["direct"]["rps"] for r in rows),
            "p50": statistics.median(r["added_p50_ms"] for r in rows),
        }
        for key, rows in by_row.items()
    }


def _table(base: str, rounds: int, before: dict[tuple[str, int], dict[str, float]],
           after: dict[tuple[str, int], dict[str, float]]) -> str:
    lines = [
        f"Medians of {rounds} interleaved runs each: `{base}` (before) and this tree (after).",
        "",
        "| mode | conc | CPU ms/req before | after | req/s before | after | added p50 ms before | after "
        "| direct req/s before | after |",
        "|" + "---|" * 10,
    ]
    for key in before:
        b, a = before[key], after.get(key)
        if a is None:
            continue
        lines.append(
            f"| {key[0]} | {key[1]} | {b['cpu']:.2f} | {a['cpu']:.2f} | {b['rps']:.0f} | {a['rps']:.0f} | "
            f"{b['p50']:.2f} | {a['p50']:.2f} | {b['direct']:.0f} | {a['direct']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the revision to compare against (git archive of it)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="full bench runs (about 2.5 minutes each) instead of --quick")
    parser.add_argument("--label", default="compare")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--topology", default="serve", choices=("serve", "split"))
    args = parser.parse_args()
    passthrough = ["--concurrency", args.concurrency, "--topology", args.topology] + ([] if args.full else ["--quick"])
    base_tree = _archive(args.base)
    before: list[list[dict[str, Any]]] = []
    after: list[list[dict[str, Any]]] = []
    for round_number in range(args.rounds):
        before.append(_run(base_tree, f"{args.label}-base-{round_number}", passthrough))
        after.append(_run(ROOT, f"{args.label}-this-{round_number}", passthrough))
        print(f"round {round_number + 1}/{args.rounds} done", flush=True)
    table = _table(args.base, args.rounds, _medians(before), _medians(after))
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{args.label}.md").write_text(table)
    for round_number in range(args.rounds):  # the per-run files of this tree are folded into the table
        for suffix in ("json", "md"):
            (out_dir / f"{args.label}-this-{round_number}.{suffix}").unlink(missing_ok=True)
    print(table)


if __name__ == "__main__":
    main()
