#!/usr/bin/env python3
"""Runs the distributed-mode benchmark (issues 3 and 11): for each topology and run, a fresh
`imstack cluster up` (ZooKeeper, Redis, FerretDB, route, dispatch and access processes on
loopback), one `imstack bench throughput` against it, then `imstack cluster down`. Besides the
bench figures it records the CPU time every process of the stack and the generator spent,
divided by the messages delivered: where a message's cost goes, which on a 2-core machine
is what bounds the throughput. Then an offered-rate sweep, the same open-loop load against
the all-in-one process and the 1 + 1 cluster, plotted (delivered/s and p99 against offered
rate) into docs/benchmarks-cluster.png. Medians of `--runs` runs go into docs/benchmarks.md
between the cluster markers, with the issue 11 targets checked against them.

    .venv/bin/pip install -e '.[bench]'    # matplotlib, for the plot
    .venv/bin/python scripts/cluster_benchmarks.py [--runs 3] [--duration 15] [--no-sweep] [--no-doc]
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
PLOT = ROOT / "docs" / "benchmarks-cluster.png"
START, END = "<!-- cluster results: start (scripts/cluster_benchmarks.py) -->", "<!-- cluster results: end -->"
TICK = os.sysconf("SC_CLK_TCK")

# (row name, access nodes, dispatch nodes, extra bench arguments)
ROWS = [
    ("1 access + 1 dispatch, closed loop", 1, 1, []),
    ("2 access + 2 dispatch, closed loop", 2, 2, []),
    ("1 access + 1 dispatch, 2,000 msg/s offered", 1, 1, ["--rate", "2000"]),
    ("1 access + 1 dispatch, groups of 10, closed loop", 1, 1, ["--group-size", "10"]),
]
CLOSED, AT_2000 = ROWS[0][0], ROWS[2][0]
# Offered 1:1 rates (msg/s, open loop) of the sweep, for the all-in-one process and the 1 + 1 cluster.
SWEEP = [1000, 2000, 4000, 6000, 8000, 12000]
# Issue 11's targets: (what, how it is read from the medians, limit, at most / at least)
TARGETS = [
    ("access + dispatch + route CPU per delivered 1:1 message", "us", 110, "max"),
    ("Redis CPU per delivered 1:1 message", "us", 35, "max"),
    ("delivered 1:1 messages/s, with persistence (1 + 1, closed loop)", "/s", 6500, "min"),
    ("p99 at 2,000 msg/s offered", "ms", 25, "max"),
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


def allinone_run(bench_args: list[str]) -> dict:
    """The same load against the all-in-one process (`imstack bench` starts one)."""
    out = imstack("bench", *bench_args, "--json", timeout=900)
    return json.loads(out.strip().splitlines()[-1])


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


def targets(rows: dict[str, tuple[dict, dict]]) -> list[str]:
    """The issue 11 target table from the medians (rows: name -> (bench medians, CPU by role))."""
    figures = {}
    if CLOSED in rows:
        medians, cpu = rows[CLOSED]
        figures[TARGETS[0][0]] = sum(cpu.get(k, 0.0) for k in ("access", "dispatch", "route"))
        figures[TARGETS[1][0]] = cpu.get("redis", 0.0)
        figures[TARGETS[2][0]] = medians["delivered_per_s"]
    if AT_2000 in rows:
        figures[TARGETS[3][0]] = rows[AT_2000][0]["p99_ms"]
    lines = ["| target (issue 11) | limit | measured (median) | met |", "|---|---|---|---|"]
    for name, unit, limit, kind in TARGETS:
        if name not in figures:
            continue
        value = figures[name]
        met = value <= limit if kind == "max" else value >= limit
        bound = f"{'<=' if kind == 'max' else '>='} {limit:,} {unit}"
        lines.append(f"| {name} | {bound} | {value:,.1f} {unit} | {'yes' if met else 'no'} |")
    return lines


def plot(sweep: dict[str, dict[int, dict]], path: Path) -> None:
    """delivered/s and p99 against offered rate, all-in-one and cluster side by side."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit("the plot needs matplotlib: .venv/bin/pip install -e '.[bench]'") from exc
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, style in (("all-in-one", "o-"), ("cluster 1 + 1", "s-")):
        points = sorted(sweep.get(mode, {}).items())
        if not points:
            continue
        rates = [r for r, _ in points]
        left.plot(rates, [m["delivered_per_s"] for _, m in points], style, label=mode)
        right.plot(rates, [m["p99_ms"] for _, m in points], style, label=mode)
    top = max(SWEEP)
    left.plot([0, top], [0, top], ":", color="grey", label="offered")
    left.set(xlabel="offered 1:1 messages/s", ylabel="delivered messages/s", title="throughput")
    right.set(xlabel="offered 1:1 messages/s", ylabel="p99 delivery latency (ms)", title="p99 latency", yscale="log")
    right.axhline(25, ls="--", color="grey", lw=0.8, label="25 ms (issue 11, at 2,000/s)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"imstack on {os.cpu_count()} shared cores: all-in-one (memory) vs cluster (Redis + FerretDB), 200 clients")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--only", default=None, help="run only rows whose name contains this")
    parser.add_argument("--no-sweep", action="store_true", help="skip the offered-rate sweep and its plot")
    parser.add_argument("--no-doc", action="store_true", help="print the results; leave docs/ alone")
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
    sweep: dict[str, dict[int, dict]] = {}
    sweep_runs: list[tuple[str, list[dict]]] = []
    if not args.no_sweep and not args.only:
        for rate in SWEEP:
            extra = ["--rate", str(rate)]
            for mode in ("all-in-one", "cluster 1 + 1"):
                results = []
                for i in range(args.runs):
                    print(f"[sweep {mode} {rate}/s] run {i + 1}/{args.runs}", file=sys.stderr, flush=True)
                    results.append(allinone_run(bench_args + extra) if mode == "all-in-one" else one_run(1, 1, bench_args + extra))
                    print(f"    {json.dumps(results[-1])}", file=sys.stderr, flush=True)
                sweep.setdefault(mode, {})[rate] = {
                    k: statistics.median(r[k] for r in results) for k in ("delivered_per_s", "p50_ms", "p99_ms")
                }
                sweep_runs.append((f"sweep {mode}, {rate:,} msg/s offered", results))
    if not rows and not sweep:
        raise SystemExit(f"no row matches --only {args.only!r}")
    load = os.getloadavg()
    lines = [
        START,
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores "
        f"({platform.python_implementation()} {platform.python_version()}, load average at the end {load[0]:.1f}); "
        f"medians of {args.runs} runs, each on a fresh `imstack cluster up` (empty database); "
        f"generator: `imstack bench {' '.join(bench_args)} --url URL --admin-key KEY` on the same machine.",
        "",
    ]
    lines += targets({name: (medians, cpu) for name, _, _, medians, cpu, _ in rows})
    lines += [
        "",
        "| topology and load | delivered msg/s | p50 ms | p99 ms | errors | CPU us per delivered message, by process (median) |",
        "|---|---|---|---|---|---|",
    ]
    for name, _, _, medians, cpu, _ in rows:
        spent = ", ".join(f"{k} {v:g}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
        total = sum(v for k, v in cpu.items())
        ours = sum(cpu.get(k, 0.0) for k in ("access", "dispatch", "route"))
        lines.append(
            f"| {name} | {medians['delivered_per_s']:,.0f} | {medians['p50_ms']:g} | {medians['p99_ms']:g} | "
            f"{medians['errors']:g} | {spent}; access + dispatch + route {ours:,.1f}; all {total:,.0f} |"
        )
    if sweep:
        if not args.no_doc:
            plot(sweep, PLOT)
        lines += [
            "",
            f"Offered-rate sweep (open loop, 1:1, `--rate R`, medians of {args.runs}): delivered msg/s / p99 ms.",
            "",
            "| offered msg/s | " + " | ".join(sweep) + " |",
            "|---" * (len(sweep) + 1) + "|",
        ]
        for rate in SWEEP:
            cells = [f"{sweep[m][rate]['delivered_per_s']:,.0f} / {sweep[m][rate]['p99_ms']:g}" for m in sweep]
            lines.append(f"| {rate:,} | " + " | ".join(cells) + " |")
        lines += ["", f"![delivered/s and p99 against offered rate]({PLOT.name})"]
    runs = [(name, results) for name, _, _, _, _, results in rows] + sweep_runs
    if args.no_doc:
        print("\n".join(lines))
        for name, results in runs:
            for r in results:
                print(f"- {name}: `{json.dumps(r)}`")
    else:
        print(write_results(DOC, START, END, lines, runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
