"""The committed generated modules must match imstack.proto."""
import subprocess
import sys


def test_generated_modules_are_current():
    result = subprocess.run(
        [sys.executable, "-m", "im_runtime.proto.build", "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr + result.stdout
