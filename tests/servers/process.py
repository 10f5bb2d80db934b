"""What every test server starter does to stop its process."""
from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen, *, grace: float = 15.0) -> None:
    """SIGTERM, wait `grace` seconds, then SIGKILL: a server never outlives its test run."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
