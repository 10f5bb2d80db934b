#!/usr/bin/env python3
"""Runs the distributed-mode benchmark (issue 3): for each topology and run, a fresh
`imstack cluster up` (ZooKeeper, Redis, FerretDB, route, dispatch and access processes on
loopback), one `imstack bench throughput` against it, then `imstack cluster down`. Besides the
bench figures it records the CPU time every process of the stack and the generator spent,
divided by the messages delivered: where a message's cost goes, which on a 2-core machine
is what bounds the throughput. Medians of `--runs` runs go into docs/benchmarks.md between
the cluster markers.

    .venv/bin/python scripts/cluster_benchmarks.py [--runs 3] [--duration 15]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import write_results  # scripts/benchmarks.py (this script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- cluster results: start (scripts/cluster_benchmarks.py) -->", "<!-- cluster results: end -->"
TICK = os.sysconf("SC_CLK_TCK")

# (row name, access nodes, dispatch nodes, extra bench arguments)
ROWS = [
    ("1 access + 1 dispatch, closed loop", 1, 1, []),
    ("2 access + 2 dispatch, closed loop", 2, 2, []),
    ("1 access + 1 dispatch, 2,000 msg/s offered", 1, 1, ["--rate", "2000"]),
    ("1 access + 1 dispatch, groups of 10, closed loop", 1, 1, ["--group-size", "10"]),
]


def imstack(*args: str, timeout: float = 300) -> str:
    cmd = [sys.executable, "-m", "im_runtime.cli", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"imstack {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def cpu_seconds(state: Path) -> dict[str, float]:
    """CPU (user + system) of every process `cluster up` recorded, by role name."""
    found = {}
    for proc in json.loads((state / "pids.json").read_text()):
        try:
            fields = Path(f"/proc/{proc['pid']}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        found[proc["name"]] = (int(fields[11]) + int(fields[12])) / TICK
    return found


def role(name: str) -> str:
    """access-1, access-2 -> access: per-message figures are per role."""
    return name.rsplit("-", 1)[0] if name.rsplit("-", 1)[-1].isdigit() else name


def one_run(access: int, dispatch: int, bench_args: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="imstack-bench-") as tmp:
        state = Path(tmp) / "cluster"
        imstack("cluster", "up", "--dir", str(state), "--access", str(access), "--dispatch", str(dispatch),
                "--http-port", "0", "--tcp-port", "0")
        try:
            info = json.loads((state / "cluster.json").read_text())
            before = cpu_seconds(state)
            gen_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            out = imstack("bench", *bench_args, "--url", info["http"], f"--admin-key={info['admin_key']}", "--json", timeout=900)
            gen_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            after = cpu_seconds(state)
        finally:
            imstack("cluster", "down", "--dir", str(state))
    result = json.loads(out.strip().splitlines()[-1])
    delivered = result["delivered_per_s"] * result["duration_s"]
    per_role: dict[str, float] = {}
    for name, spent in after.items():
        per_role[role(name)] = per_role.get(role(name), 0.0) + spent - before.get(name, spent)
    per_role["generator"] = (gen_after.ru_utime + gen_after.ru_stime) - (gen_before.ru_utime + gen_before.ru_stime)
    result["cpu_us_per_message"] = {k: round(1e6 * v / delivered, 1) for k, v in per_role.items()} if delivered else {}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--only", default=None, help="run only rows whose name contains this")
    args = parser.parse_args()
    bench_args = ["throughput", "--duration", f"{args.duration:g}", "--clients", str(args.clients), "--procs", "1"]
    rows = []
    for name, access, dispatch, extra in ROWS:
        if args.only and args.only not in name:
            continue
        results = []
        for i in range(args.runs):
            print(f"[{name}] run {i + 1}/{args.runs}: cluster up --access {access} --dispatch {dispatch}; "
                  f"imstack bench {' '.join(bench_args + extra)}", file=sys.stderr, flush=True)
            results.append(one_run(access, dispatch, bench_args + extra))
            print(f"    {json.dumps(results[-1])}", file=sys.stderr, flush=True)
        medians = {k: statistics.median(r[k] for r in results) for k in ("delivered_per_s", "p50_ms", "p99_ms", "errors")}
        roles = sorted({k for r in results for k in r["cpu_us_per_message"]})
        cpu = {k: statistics.median(r["cpu_us_per_message"].get(k, 0.0) for r in results) for k in roles}
        rows.append((name, access, dispatch, medians, cpu, results))
    if not rows:
        raise SystemExit(f"no row matches --only {args.only!r}")
    load = os.getloadavg()
    lines = [
        START,
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores "
        f"({platform.python_implementation()} {platform.python_version()}, load average at the end {load[0]:.1f}); "
        f"medians of {args.runs} runs, each on a fresh `imstack cluster up` (empty database); "
        f"generator: `imstack bench {' '.join(bench_args)} --url URL --admin-key KEY` on the same machine.",
        "",
        "| topology and load | delivered msg/s | p50 ms | p99 ms | errors | CPU us per delivered message, by process (median) |",
        "|---|---|---|---|---|---|",
    ]
    for name, _, _, medians, cpu, _ in rows:
        spent = ", ".join(f"{k} {v:g}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
        total = sum(v for k, v in cpu.items())
        lines.append(
            f"| {name} | {medians['delivered_per_s']:,.0f} | {medians['p50_ms']:g} | {medians['p99_ms']:g} | "
            f"{medians['errors']:g} | {spent}; all {total:,.0f} |"
        )
    print(write_results(DOC, START, END, lines, [(name, results) for name, _, _, _, _, results in rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
