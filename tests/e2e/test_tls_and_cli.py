"""TLS on client connections and HTTPS (S8, S16), and `imstack up` as users run it."""
import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request


from im_runtime.client import ImClient
from tests.certs import make_cert


async def test_tls_client_and_https_api(stack_factory, tmp_path):
    cert, key = make_cert(tmp_path)
    stack = await stack_factory(tls_cert=cert, tls_key=key)
    ctx = ssl.create_default_context(cafile=cert)
    token = stack.app.signer.mint("alice").token
    alice = ImClient("alice", token, port=stack.tcp_port, ssl_context=ctx)
    bob = ImClient("bob", stack.app.signer.mint("bob").token, port=stack.tcp_port, ssl_context=ctx)
    await alice.connect()
    await bob.connect()
    try:
        await alice.send("bob", "over tls")
        assert (await bob.receive(5)).content == b"over tls"
    finally:
        await alice.close()
        await bob.close()
    # plain TCP to the TLS port gets nothing readable
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.tcp_port)
    writer.write(b"\x00" * 20)
    data = await asyncio.wait_for(reader.read(100), 5)
    assert not data.startswith(b"\x00\x00\x00\x14")
    writer.close()
    # HttpDNS-style ipList over HTTPS (S16)
    body = await asyncio.to_thread(
        lambda: json.loads(urllib.request.urlopen(f"https://127.0.0.1:{stack.app.http_port}/v1/iplist", context=ctx, timeout=5).read())
    )
    assert body["tcp"][0]["host"] == "127.0.0.1"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_imstack_up_serves_and_prints_the_admin_key_once(tmp_path):
    http, tcp, ws = _free_port(), _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMSTACK_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "im_runtime.cli", "up", "--http-port", str(http), "--tcp-port", str(tcp), "--ws-port", str(ws)],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    try:
        admin_key = None
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline and admin_key is None:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("admin key (printed once): "):
                admin_key = line.split(": ", 1)[1].strip()
        assert admin_key, "".join(lines)
        assert any(f"TCP 127.0.0.1:{tcp}" in l for l in lines)
        token = subprocess.run(
            [sys.executable, "-m", "im_runtime.cli", "token", "alice", "--url", f"http://127.0.0.1:{http}"],
            env=env | {"IMSTACK_ADMIN_KEY": admin_key}, capture_output=True, text=True, timeout=30,
        )
        assert token.returncode == 0, token.stderr
        assert token.stdout.startswith("v1.")
        refused = subprocess.run(
            [sys.executable, "-m", "im_runtime.cli", "token", "alice", "--url", f"http://127.0.0.1:{http}"],
            env=env | {"IMSTACK_ADMIN_KEY": "wrong"}, capture_output=True, text=True, timeout=30,
        )
        assert refused.returncode == 1 and "401" in refused.stderr

        async def chat():
            c = ImClient("alice", token.stdout.strip(), port=tcp)
            await c.connect()
            ack = await c.send("alice", "note to self")
            got = await c.receive(5)
            await c.close()
            return ack, got

        ack, got = asyncio.run(chat())
        assert ack.code == 0 and got.content == b"note to self"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert proc.returncode in (0, -15)


def test_imstack_chat_talks_to_an_sdk_client():
    """The terminal client: typed lines are sent, incoming messages are printed."""
    from im_runtime.bench.stackproc import start_stack

    stack = start_stack()
    chat = None
    try:
        env = dict(os.environ, IMSTACK_ADMIN_KEY=stack.admin_key)
        chat = subprocess.Popen(
            [sys.executable, "-m", "im_runtime.cli", "chat", "alice", "--to", "bob", "--url", stack.http_url],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

        def read_until(needle: str, timeout: float = 20.0) -> str:
            deadline = time.monotonic() + timeout
            seen = []
            while time.monotonic() < deadline:
                line = chat.stdout.readline()
                if not line:
                    break
                seen.append(line)
                if needle in line:
                    return line
            raise AssertionError(f"{needle!r} not printed; got {seen!r}; stderr {chat.stderr.read() if chat.poll() is not None else ''}")

        read_until("connected as alice")

        async def bob_side():
            from im_runtime.route.tokens import TokenSigner

            bob = ImClient("bob", TokenSigner(stack.token_key.encode()).mint("bob").token, port=stack.tcp_port)
            await bob.connect()
            try:
                chat.stdin.write("hello from the terminal\n")
                chat.stdin.flush()
                got = await bob.receive(15)
                await bob.send("alice", "hello back")
                return got
            finally:
                await bob.close()

        got = asyncio.run(bob_side())
        assert got.content == b"hello from the terminal" and getattr(got, "from") == "alice"
        assert "bob: hello back" in read_until("hello back")
        chat.stdin.write("/unread\n")
        chat.stdin.flush()
        assert "unread" in read_until("unread")
        chat.stdin.write("/quit\n")
        chat.stdin.flush()
        assert chat.wait(timeout=15) == 0
    finally:
        if chat is not None and chat.poll() is None:
            chat.kill()
        stack.stop()
