"""`imstack cluster up|down`: the distributed topology on one box, for people to try.

Starts ZooKeeper, Redis and FerretDB (as MongoDB) on free loopback ports, then one route, N
dispatch and N access processes (`imstack route|dispatch|access`), waits until each is ready,
prints the HTTP API address and the admin key, and returns. State (pids, ports, logs, data)
lives in one folder; `down` SIGTERMs everything recorded there (then SIGKILLs stragglers).
Needs the servers that `make setup-test-deps` installs (zookeeper, redis-server, FerretDB).
"""
from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SETUP_HINT = "run `make setup-test-deps` (scripts/setup.d) first"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}; see {log}:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} not ready after {timeout:.0f}s; see {log}")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310
        return resp.status == 200


def _tcp_ok(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


class _Launcher:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.procs: list[dict] = []

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[subprocess.Popen, Path]:
        log = self.state / "logs" / f"{name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=cwd, start_new_session=True)
        self.procs.append({"name": name, "pid": proc.pid})
        self.save()
        return proc, log

    def save(self) -> None:
        (self.state / "pids.json").write_text(json.dumps(self.procs, indent=1))


def up(state_dir: str, *, access: int = 2, dispatch: int = 2, http_port: int = 8080, first_tcp_port: int = 9000) -> int:
    state = Path(state_dir).resolve()
    if (state / "pids.json").exists() and any(_alive(p["pid"]) for p in json.loads((state / "pids.json").read_text())):
        print(f"a cluster is already running from {state}; `imstack cluster down --dir {state_dir}` first", file=sys.stderr)
        return 1
    (state / "logs").mkdir(parents=True, exist_ok=True)
    launcher = _Launcher(state)
    try:
        return _up(state, launcher, access, dispatch, http_port or _free_port(), first_tcp_port)
    except BaseException:
        down(str(state))
        raise


def _up(state: Path, launcher: _Launcher, access: int, dispatch: int, http_port: int, first_tcp_port: int) -> int:
    java, redis = shutil.which("java"), shutil.which("redis-server")
    jars = sorted(glob.glob("/usr/share/java/*.jar"))
    ferret = Path(os.environ.get("IMSTACK_TOOLS", Path.home() / ".cache/imstack/tools")) / "bin" / "ferretdb"
    if not java or not any("zookeeper" in j for j in jars):
        raise SystemExit(f"ZooKeeper (java + /usr/share/java/zookeeper*.jar) not found: {SETUP_HINT}")
    if not redis:
        raise SystemExit(f"redis-server not found: {SETUP_HINT}")
    if not os.access(ferret, os.X_OK):
        raise SystemExit(f"FerretDB not built at {ferret}: {SETUP_HINT}")

    zk_port, redis_port, mongo_port = _free_port(), _free_port(), _free_port()
    (state / "zk").mkdir(exist_ok=True)
    (state / "zoo.cfg").write_text(
        f"tickTime=500\ndataDir={state / 'zk'}\nclientPort={zk_port}\nclientPortAddress=127.0.0.1\n"
        "admin.enableServer=false\nmaxClientCnxns=0\nminSessionTimeout=1000\nmaxSessionTimeout=30000\n"
    )
    p, log = launcher.spawn("zookeeper", [java, "-Xmx256m", "-cp", ":".join(jars), "org.apache.zookeeper.server.ZooKeeperServerMain", str(state / "zoo.cfg")])
    _wait(lambda: _tcp_ok(zk_port), "zookeeper", p, log)
    p, log = launcher.spawn("redis", [redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                      "--daemonize", "no", "--maxmemory-policy", "noeviction", "--dir", str(state)])
    _wait(lambda: _tcp_ok(redis_port), "redis", p, log)
    (state / "mongo").mkdir(exist_ok=True)
    # WAL + synchronous=NORMAL: durable across process crashes (kill -9 of anything), not across
    # power loss; FerretDB's default (FULL) fsyncs every insert, ~4x slower here.
    # GOGC=400: FerretDB allocates per document; fewer Go collections cut its CPU per stored
    # message by ~10 % here, for a few more MB of heap.
    sqlite_url = f"file:{state / 'mongo'}/?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)"
    p, log = launcher.spawn(
        "ferretdb",
        [str(ferret), "--handler=sqlite", f"--sqlite-url={sqlite_url}", f"--listen-addr=127.0.0.1:{mongo_port}", "--log-level=warn"],
        env=dict(os.environ, DO_NOT_TRACK="1", GOGC="400"),
    )
    _wait(lambda: _tcp_ok(mongo_port), "ferretdb", p, log)

    admin_key = os.environ.get("IMSTACK_ADMIN_KEY") or secrets.token_urlsafe(24)
    grpc_port = _free_port()
    env = dict(
        os.environ,
        IMSTACK_ZK=f"127.0.0.1:{zk_port}", IMSTACK_ZK_ROOT="/imstack/local",
        IMSTACK_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", IMSTACK_MONGO_URL=f"mongodb://127.0.0.1:{mongo_port}/",
        IMSTACK_MONGO_DB="imstack", IMSTACK_ROUTE_GRPC=f"127.0.0.1:{grpc_port}",
        IMSTACK_ADMIN_KEY=admin_key, IMSTACK_TOKEN_KEY=os.environ.get("IMSTACK_TOKEN_KEY") or secrets.token_urlsafe(32),
    )
    cli = [sys.executable, "-m", "im_runtime.cli"]
    p, log = launcher.spawn("route-1", cli + ["route", "--node-id", "route-1", "--http-port", str(http_port), "--grpc-port", str(grpc_port)], env)
    _wait(lambda: _http_ok(f"http://127.0.0.1:{http_port}/readyz"), "route-1", p, log)
    for i in range(1, dispatch + 1):
        metrics = _free_port()
        p, log = launcher.spawn(f"dispatch-{i}", cli + ["dispatch", "--node-id", f"dispatch-{i}", "--link-port", str(_free_port()),
                                                       "--metrics-port", str(metrics)], env)
        _wait(lambda: _http_ok(f"http://127.0.0.1:{metrics}/readyz"), f"dispatch-{i}", p, log)
    tcp_ports = []
    for i in range(1, access + 1):
        metrics, port = _free_port(), (first_tcp_port + i - 1 if first_tcp_port else _free_port())
        p, log = launcher.spawn(f"access-{i}", cli + ["access", "--node-id", f"access-{i}", "--port", str(port),
                                                     "--metrics-port", str(metrics)], env)
        _wait(lambda: _http_ok(f"http://127.0.0.1:{metrics}/readyz"), f"access-{i}", p, log)
        tcp_ports.append(port)
    (state / "cluster.json").write_text(json.dumps({"http": f"http://127.0.0.1:{http_port}", "admin_key": admin_key,
                                                    "tcp": tcp_ports, "zk": env["IMSTACK_ZK"]}, indent=1))
    print(f"imstack cluster is up: HTTP API http://127.0.0.1:{http_port}  access TCP {', '.join(map(str, tcp_ports))}")
    print(f"admin key: {admin_key}")
    print(f"try: IMSTACK_ADMIN_KEY={admin_key} imstack chat alice --url http://127.0.0.1:{http_port}")
    print(f"logs and state in {state}; stop with `imstack cluster down --dir {state}`")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reaps it if it is our own exited child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def down(state_dir: str) -> int:
    state = Path(state_dir).resolve()
    pids_file = state / "pids.json"
    if not pids_file.exists():
        print(f"no cluster recorded in {state}", file=sys.stderr)
        return 0
    procs = json.loads(pids_file.read_text())
    servers = {"zookeeper", "redis", "ferretdb"}
    # Roles first (they leave ZooKeeper cleanly while it is still there), then the servers.
    for group in ([p for p in procs if p["name"] not in servers], [p for p in procs if p["name"] in servers]):
        for p in group:
            if _alive(p["pid"]):
                os.kill(p["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p["pid"]) for p in group):
            time.sleep(0.1)
        for p in group:
            if _alive(p["pid"]):
                os.kill(p["pid"], signal.SIGKILL)
    pids_file.unlink()
    print(f"imstack cluster stopped ({len(procs)} processes)")
    return 0
