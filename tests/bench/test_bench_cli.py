"""The load generator runs end to end and reports what it promises (no speed assertions:
speed is measured by `imstack bench` into docs/benchmarks.md, never by timed tests)."""
import json
import subprocess
import sys


def _bench(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "im_runtime.cli", "bench", *args, "--json"], capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_throughput_single_reports_every_field():
    r = _bench("throughput", "--duration", "2", "--clients", "20", "--rate", "400")
    for key in ("delivered_per_s", "p50_ms", "p99_ms", "p999_ms", "sent_per_s", "server_cpu_s"):
        assert key in r
    assert r["errors"] == 0 and r["delivered_per_s"] > 0
    assert r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"]
    # every acked message was delivered (1:1: one receiver each), within the drain time
    assert abs(r["delivered_per_s"] - r["acked_per_s"]) <= 0.02 * r["acked_per_s"] + 1


def test_throughput_group_delivers_to_every_member():
    r = _bench("throughput", "--duration", "2", "--clients", "12", "--group-size", "4", "--rate", "120")
    assert r["mode"] == "group" and r["errors"] == 0
    # each message reaches the 3 other members
    assert r["delivered_per_s"] >= 2.5 * r["acked_per_s"]


def test_connections_reports_rss_per_connection():
    r = _bench("connections", "--count", "300", "--procs", "2", "--hold", "1")
    assert r["connections"] == 300 and r["failed"] == 0 and r["alive_at_end"] == 300
    assert r["server_rss_per_conn_kib"] is not None and r["server_rss_after_kib"] >= r["server_rss_before_kib"]


def test_connections_over_websocket():
    r = _bench("connections", "--ws", "--count", "200", "--procs", "2", "--hold", "1")
    assert r["transport"] == "ws" and r["connections"] == 200 and r["failed"] == 0 and r["alive_at_end"] == 200


def test_throughput_over_websocket_delivers_every_acked_message():
    r = _bench("throughput", "--ws", "--duration", "2", "--clients", "16", "--rate", "300")
    assert r["transport"] == "ws" and r["errors"] == 0 and r["delivered_per_s"] > 0
    assert abs(r["delivered_per_s"] - r["acked_per_s"]) <= 0.02 * r["acked_per_s"] + 1


def test_throughput_shows_progress_while_it_runs():
    """Each second of load prints a progress line on stderr (stdout keeps the one JSON object)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "im_runtime.cli", "bench", "throughput", "--duration", "3", "--clients", "20", "--rate", "400", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    seen_while_running = []
    for line in proc.stderr:  # read as it comes: the lines must appear before the end
        if "/3 s" in line:
            seen_while_running.append((line.strip(), proc.poll() is None))
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0
    assert [s.split()[1] for s, _ in seen_while_running] == ["1/3", "2/3", "3/3"]
    assert all(running for _, running in seen_while_running)
    assert "delivered" in seen_while_running[1][0] and "/s" in seen_while_running[1][0]
    rate = int(seen_while_running[1][0].split("delivered ")[1].split("/s")[0].replace(",", ""))
    assert rate > 0  # a live figure, not only elapsed seconds
    assert json.loads(out.strip().splitlines()[-1])["delivered_per_s"] > 0
