"""`imstack` command line: up, token, chat, bench (and the cluster roles when installed)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.request

from im_runtime import logs
from im_runtime.config import Settings


def _run(coro) -> None:  # type: ignore[no-untyped-def]
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


def cmd_up(args: argparse.Namespace) -> int:
    from im_runtime.allinone import run_forever

    settings = Settings()
    if args.host:
        settings.host = args.host
    for name in ("http_port", "tcp_port", "ws_port"):
        value = getattr(args, name)
        if value is not None:
            setattr(settings, name, value)
    if args.id_mode:
        settings.id_mode = args.id_mode
    if args.idle_timeout is not None:
        settings.idle_timeout = args.idle_timeout
    if args.push_webhook:
        settings.push_webhook_url = args.push_webhook
    if args.no_push_preview:
        settings.push_webhook_preview = False
    # The dev login mints tokens for anyone: only on by default when nobody else can reach it.
    settings.dev_login = settings.dev_login or (not args.no_dev_login and _is_loopback(settings.host))
    logs.configure(fmt=args.log_format)
    _run(run_forever(settings))
    return 0


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def cmd_token(args: argparse.Namespace) -> int:
    key = args.token_key or os.environ.get("IMSTACK_TOKEN_KEY")
    if key:
        from im_runtime.route.tokens import TokenSigner

        token = TokenSigner(key.encode()).mint(args.uid, ttl_s=args.ttl)
        print(token.token)
        return 0
    admin_key = args.admin_key or os.environ.get("IMSTACK_ADMIN_KEY")
    if not admin_key:
        print("need IMSTACK_ADMIN_KEY (or --admin-key) to ask the running stack, or IMSTACK_TOKEN_KEY to sign locally", file=sys.stderr)
        return 2
    body = {"uid": args.uid} | ({"ttl_s": args.ttl} if args.ttl else {})
    req = urllib.request.Request(
        f"{args.url.rstrip('/')}/v1/tokens",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            print(json.loads(resp.read())["token"])
    except urllib.error.HTTPError as exc:
        print(f"token request refused: {exc.code} {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from im_runtime.chat import run_chat

    return run_chat(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from im_runtime.bench.main import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imstack", description="imstack instant-messaging stack")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run every role in one process (memory engine, no external servers)")
    up.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    up.add_argument("--http-port", type=int, default=None)
    up.add_argument("--tcp-port", type=int, default=None)
    up.add_argument("--ws-port", type=int, default=None)
    up.add_argument("--id-mode", choices=["snowflake", "segment"], default=None)
    up.add_argument("--idle-timeout", type=float, default=None, help="seconds without a frame before a client is closed")
    up.add_argument("--no-dev-login", action="store_true", help="disable POST /v1/dev/login (tokens only via the admin key)")
    up.add_argument("--push-webhook", default=None, metavar="URL",
                    help="offline push: POST to this URL when a receiver has no connected device (IMSTACK_PUSH_WEBHOOK_URL)")
    up.add_argument("--no-push-preview", action="store_true", help="leave message text out of the webhook calls")
    up.add_argument("--log-format", choices=["json", "text"], default=None)
    up.set_defaults(func=cmd_up)

    token = sub.add_parser("token", help="mint a user token")
    token.add_argument("uid")
    token.add_argument("--url", default="http://127.0.0.1:8080", help="route HTTP address")
    token.add_argument("--admin-key", default=None)
    token.add_argument("--token-key", default=None, help="sign locally with this key instead of asking the stack")
    token.add_argument("--ttl", type=int, default=None, help="seconds until the token expires")
    token.set_defaults(func=cmd_token)

    chat = sub.add_parser("chat", help="interactive terminal chat client")
    chat.add_argument("uid")
    chat.add_argument("--token", default=None, help="token (default: dev login, then IMSTACK_ADMIN_KEY)")
    chat.add_argument("--url", default="http://127.0.0.1:8080", help="route HTTP address (ipList, tokens)")
    chat.add_argument("--to", default=None, help="start talking to this uid (or g:<group>)")
    chat.set_defaults(func=cmd_chat)

    from im_runtime.bench.main import add_bench_parser

    add_bench_parser(sub)

    try:
        from im_runtime.roles import add_role_parsers
    except ImportError:
        pass
    else:
        add_role_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    raise SystemExit(main())
