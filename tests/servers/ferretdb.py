"""Starts a real FerretDB (MongoDB wire protocol over SQLite) for tests.

The binary is built by scripts/setup.d/20-ferretdb.sh into $IMSTACK_TOOLS/bin/ferretdb. Each
call runs its own process on a free loopback port with its own SQLite directory. The binary is
a thin main around FerretDB's embeddable package (scripts/tools/ferretdb/main.go): its state is
in memory, it has no debug listener and never sends telemetry, so parallel servers never collide.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers.process import stop_process
from tests.servers.redis import free_port

_SETUP_HINT = "run `bash scripts/setup.d/20-ferretdb.sh` (or `make setup-test-deps`)"


def ferretdb_binary() -> Path:
    tools = Path(os.environ.get("IMSTACK_TOOLS", Path.home() / ".cache/imstack/tools"))
    return tools / "bin" / "ferretdb"


@dataclass
class FerretDB:
    port: int
    process: subprocess.Popen
    log_path: Path
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"mongodb://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        stop_process(self.process, grace=15)


def _answers(port: int) -> bool:
    """A MongoDB `ping` over the wire (pymongo, sync) once the port accepts connections."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            pass
    except OSError:
        return False
    from pymongo import MongoClient

    client = MongoClient(f"mongodb://127.0.0.1:{port}/", directConnection=True, serverSelectionTimeoutMS=1000)
    try:
        return client.admin.command("ping").get("ok") == 1.0
    except Exception:
        return False
    finally:
        client.close()


def start_ferretdb(tmp_dir: str | Path) -> FerretDB:
    binary = ferretdb_binary()
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"FerretDB is not built at {binary}: {_SETUP_HINT}")
    last_error = ""
    for _attempt in range(3):  # a free port can be taken between probe and bind: retry
        port = free_port()
        base = Path(tmp_dir) / f"ferretdb-{port}"
        data = base / "data"
        data.mkdir(parents=True, exist_ok=True)
        log_path = base / "ferretdb.log"
        args = [
            # WAL + synchronous=NORMAL, as `imstack cluster up` runs it: durable across kill -9
            # of any process, without an fsync per insert.
            str(binary), "--handler=sqlite",
            f"--sqlite-url=file:{data}/?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)",
            f"--listen-addr=127.0.0.1:{port}",
            "--log-level=warn",
        ]
        env = dict(os.environ, DO_NOT_TRACK="1")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if _answers(port):
                return FerretDB(port=port, process=process, log_path=log_path)
            time.sleep(0.1)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        last_error = f"exit={process.returncode} log={log_path.read_text(errors='replace')[-2000:].strip()}"
    raise RuntimeError(f"FerretDB did not start on 127.0.0.1: {last_error}")
