"""The JavaScript side of issue 4 from pytest: the node unit tests of the client library
(codec, reorder/de-dup, ack/retry against an in-memory server) and the check that the
committed page under im_runtime/web/static is what the sources in web/ build to."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node (Node 20) is not installed; it comes with the machine image")
    if not (WEB / "node_modules" / "protobufjs").is_dir():
        raise RuntimeError("web/node_modules is missing: run scripts/setup.d/25-web.sh (make setup-test-deps)")
    return node


@pytest.mark.timeout(180)
def test_node_unit_tests_pass():
    result = subprocess.run([_node(), "--test", "test/"], cwd=WEB, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout


@pytest.mark.timeout(120)
def test_committed_page_is_current_with_sources():
    result = subprocess.run([_node(), "build.mjs", "--check"], cwd=WEB, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, (
        "im_runtime/web/static is stale: run `npm run build` in web/ and commit it\n" + result.stderr
    )


def test_static_page_is_packaged():
    static = ROOT / "im_runtime" / "web" / "static"
    for name in ("index.html", "app.js", "style.css"):
        assert (static / name).is_file(), name
    html = (static / "index.html").read_text()
    assert 'src="static/app.js"' in html and 'href="static/style.css"' in html
    assert 'src="http' not in html and 'href="http' not in html and "//cdn" not in html, "no CDN at run time"
