"""Start a real ZooKeeper for a test, on a free loopback port.

Uses the Debian `zookeeper` package (installed by scripts/setup.d/10-debian-packages.sh) and
runs `ZooKeeperServerMain` directly: `zkServer.sh` needs environment the package does not set.
The server is a standalone one with its data in the test's temporary folder; it is ready when
kazoo can open a session. API (other areas reuse it, keep it stable):

    zk = start_zookeeper(tmp_path)   # -> ZooKeeperServer
    zk.hosts                         # "127.0.0.1:PORT"
    zk.stop()
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers.process import stop_process

JAVA_DIR = "/usr/share/java"
SETUP_HINT = "install it with `bash scripts/setup.d/10-debian-packages.sh` (or `make setup-test-deps`)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _classpath() -> str:
    jars = sorted(glob.glob(os.path.join(JAVA_DIR, "*.jar")))
    if not any("zookeeper" in os.path.basename(j) for j in jars):
        raise RuntimeError(f"ZooKeeper jars not found in {JAVA_DIR}: {SETUP_HINT}")
    return ":".join(jars)


@dataclass
class ZooKeeperServer:
    port: int
    data_dir: Path
    process: subprocess.Popen
    log_path: Path
    _log_file: object = field(repr=False, default=None)

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process, grace=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _wait_ready(server: ZooKeeperServer, deadline: float) -> None:
    from kazoo.client import KazooClient

    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"ZooKeeper exited with {server.process.returncode}; log:\n"
                + server.log_path.read_text(errors="replace")[-4000:]
            )
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.5):
                pass
            client = KazooClient(hosts=server.hosts, timeout=5.0)
            try:
                client.start(timeout=5.0)
                client.get_children("/")
                return
            finally:
                client.stop()
                client.close()
        except Exception as exc:  # not up yet; bounded by the deadline
            last_error = exc
            time.sleep(0.2)
    raise RuntimeError(f"ZooKeeper on {server.hosts} not ready in time: {last_error!r}")


def start_zookeeper(tmp_path: Path | str, *, timeout: float = 60.0) -> ZooKeeperServer:
    """Start ZooKeeper with its data under `tmp_path`; returns once a kazoo session opens."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError(f"java not found (ZooKeeper needs it): {SETUP_HINT}")
    classpath = _classpath()
    base = Path(tmp_path) / f"zookeeper-{os.getpid()}-{time.monotonic_ns()}"
    data_dir = base / "data"
    data_dir.mkdir(parents=True)
    port = free_port()
    cfg = base / "zoo.cfg"
    cfg.write_text(
        "tickTime=500\n"
        f"dataDir={data_dir}\n"
        f"clientPort={port}\n"
        "clientPortAddress=127.0.0.1\n"
        "admin.enableServer=false\n"
        "maxClientCnxns=0\n"
        "4lw.commands.whitelist=*\n"
        # A short tick lets tests see an expired session (a dead access pod) quickly.
        "minSessionTimeout=1000\n"
        "maxSessionTimeout=30000\n"
    )
    log_path = base / "zookeeper.log"
    log_file = open(log_path, "wb")
    process = subprocess.Popen(
        [java, "-Xmx256m", "-cp", classpath, "org.apache.zookeeper.server.ZooKeeperServerMain", str(cfg)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=base,
    )
    server = ZooKeeperServer(port=port, data_dir=data_dir, process=process, log_path=log_path, _log_file=log_file)
    try:
        _wait_ready(server, time.monotonic() + timeout)
    except BaseException:
        server.stop()
        raise
    return server
