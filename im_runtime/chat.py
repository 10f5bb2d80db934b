"""`imstack chat`: an interactive terminal client on the SDK.

Lines you type go to the current peer; commands start with '/':
  /to <uid>  /group <id>  /history  /unread  /read  /quit
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.request

from im_runtime.client import GROUP, SINGLE, ImClient, SendFailed, ServerError
from im_runtime.client.client import fetch_iplist
from im_runtime.protocol.types import group_conversation, single_conversation


def _token(args: argparse.Namespace) -> str:
    if args.token:
        return args.token
    attempts = [("/v1/dev/login", {})]
    admin = os.environ.get("IMSTACK_ADMIN_KEY")
    if admin:
        attempts.append(("/v1/tokens", {"Authorization": f"Bearer {admin}"}))
    for path, headers in attempts:
        req = urllib.request.Request(
            args.url.rstrip("/") + path, data=json.dumps({"uid": args.uid}).encode(),
            headers={"Content-Type": "application/json", **headers}, method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
                return json.loads(resp.read())["token"]
        except OSError:
            continue
    raise SystemExit("no token: pass --token, or set IMSTACK_ADMIN_KEY, or run a stack with dev login")


def _show(message, me: str) -> str:  # type: ignore[no-untyped-def]
    sender = getattr(message, "from")
    stamp = time.strftime("%H:%M:%S", time.localtime(message.server_time / 1000))
    where = message.conversation_id
    text = message.content.decode(errors="replace")
    return f"[{stamp}] {where} #{message.seq} {'me' if sender == me else sender}: {text}"


async def _chat(args: argparse.Namespace) -> int:
    token = _token(args)
    nodes = fetch_iplist(args.url).get("tcp", [])
    if not nodes:
        print("no access node available", file=sys.stderr)
        return 1
    client = ImClient(args.uid, token, host=nodes[0]["host"], port=nodes[0]["port"], http_url=args.url, device_id="cli")
    await client.connect()
    target: tuple[int, str] | None = None
    if args.to:
        target = (GROUP, args.to[2:]) if args.to.startswith("g:") else (SINGLE, args.to)
    print(f"connected as {args.uid}; /to <uid>, /group <id>, /history, /unread, /read, /quit", flush=True)

    async def printer() -> None:
        async for message in client.messages():
            print(_show(message, args.uid), flush=True)

    printing = asyncio.ensure_future(printer())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while True:
            raw = await reader.readline()
            if not raw:
                break
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            conv = None
            if target:
                conv = group_conversation(target[1]) if target[0] == GROUP else single_conversation(args.uid, target[1])
            try:
                if line == "/quit":
                    break
                elif line.startswith("/to "):
                    target = (SINGLE, line[4:].strip())
                    print(f"talking to {target[1]}", flush=True)
                elif line.startswith("/group "):
                    target = (GROUP, line[7:].strip())
                    print(f"talking in group {target[1]}", flush=True)
                elif line == "/unread":
                    total, per = await client.unread()
                    print(f"unread {total}: {per}", flush=True)
                elif line == "/history" and conv:
                    messages, _ = await client.history(conv, limit=20)
                    for message in messages:
                        print(_show(message, args.uid), flush=True)
                elif line == "/read" and conv:
                    messages, _ = await client.history(conv, limit=1)
                    if messages:
                        await client.read_report(conv, messages[-1].seq)
                        print(f"marked {conv} read up to #{messages[-1].seq}", flush=True)
                elif line.startswith("/"):
                    print("unknown command", flush=True)
                elif target is None:
                    print("choose a peer first: /to <uid> or /group <id>", flush=True)
                else:
                    ack = await client.send(target[1], line, type=target[0])
                    print(f"sent #{ack.seq} to {ack.conversation_id}", flush=True)
            except (SendFailed, ServerError) as exc:
                print(f"error: {exc}", flush=True)
    finally:
        printing.cancel()
        await client.close()
    return 0


def run_chat(args: argparse.Namespace) -> int:
    return asyncio.run(_chat(args))
