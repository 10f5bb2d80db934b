#!/usr/bin/env python3
"""Runs the all-in-one benchmark set (each configuration `--runs` times, medians reported)
and rewrites the results section of docs/benchmarks.md between its markers.

    .venv/bin/python scripts/benchmarks.py [--runs 3] [--quick]

Each row names the exact `imstack bench` command that made it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- all-in-one results: start (scripts/benchmarks.py) -->", "<!-- all-in-one results: end -->"

CONFIGS = [
    ("max 1:1 throughput", ["throughput", "--duration", "10", "--clients", "200", "--procs", "1"]),
    ("1:1 at 5,000 msg/s", ["throughput", "--duration", "10", "--clients", "200", "--rate", "5000", "--procs", "1"]),
    ("group of 10, max", ["throughput", "--duration", "10", "--clients", "200", "--group-size", "10", "--procs", "1"]),
    ("1:1 over WebSocket, max", ["throughput", "--ws", "--duration", "10", "--clients", "200", "--procs", "1"]),
    ("15,000 idle TCP", ["connections", "--count", "15000", "--procs", "4", "--addresses", "4"]),
    ("10,000 idle WebSocket", ["connections", "--ws", "--count", "10000", "--procs", "4", "--addresses", "4"]),
]
KEYS = {
    "throughput": ["sent_per_s", "delivered_per_s", "p50_ms", "p99_ms", "p999_ms", "server_cpu_s", "errors", "pull_notifies"],
    "connections": ["connections", "failed", "server_rss_per_conn_kib", "server_rss_after_kib", "open_s"],
}


def run(args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "im_runtime.cli", "bench", *args, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=None, help="run only configurations whose name contains this")
    args = parser.parse_args()
    rows = []
    for name, bench_args in CONFIGS:
        if args.only and args.only not in name:
            continue
        results = []
        for i in range(args.runs):
            print(f"[{name}] run {i + 1}/{args.runs}: imstack bench {' '.join(bench_args)}", file=sys.stderr, flush=True)
            results.append(run(bench_args))
            print(f"    {json.dumps(results[-1])}", file=sys.stderr, flush=True)
        kind = bench_args[0]
        medians = {k: statistics.median(r[k] for r in results) for k in KEYS[kind]}
        rows.append((name, bench_args, kind, medians, results))
    load = os.getloadavg()
    lines = [
        START,
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores "
        f"({platform.python_implementation()} {platform.python_version()}, load average before the last run "
        f"{load[0]:.1f}); medians of {args.runs} runs; load generator and server on the same machine.",
        "",
        "| benchmark | command | " + "figures (median) |",
        "|---|---|---|",
    ]
    for name, bench_args, kind, medians, results in rows:
        figures = ", ".join(f"{k} {v:g}" for k, v in medians.items())
        lines.append(f"| {name} | `imstack bench {' '.join(bench_args)}` | {figures} |")
    print(write_results(DOC, START, END, lines, [(name, results) for name, _, _, _, results in rows]))
    return 0


def write_results(doc: Path, start: str, end: str, lines: list[str], runs: list[tuple[str, list[dict]]]) -> str:
    """Puts `lines` (beginning with the start marker) and every run's JSON in place of the
    doc's section between the markers, or at the end of the doc when it has none; returns it."""
    lines = [*lines, "", "<details><summary>every run (JSON)</summary>\n"]
    lines += [f"- {name}: `{json.dumps(r)}`" for name, results in runs for r in results]
    lines += ["\n</details>", end]
    block = "\n".join(lines)
    text = doc.read_text() if doc.exists() else ""
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
    return block


if __name__ == "__main__":
    raise SystemExit(main())
