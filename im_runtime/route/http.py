"""The HTTP API of PROTOCOL.md plus health and metrics (served by the route role).

JSON bodies follow protobuf's JSON mapping with the proto field names, so int64 ids are
strings (JavaScript cannot hold a snowflake id in a number) and bytes are base64.
"""
from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web
from google.protobuf.json_format import MessageToDict

from im_runtime import metrics
from im_runtime.dispatch.queries import history, members_joined, membership, refusal
from im_runtime.protocol.types import ErrorCode
from im_runtime.route.iplist import IpListSource, iplist
from im_runtime.protocol.types import valid_uid
from im_runtime.route.tokens import TokenSigner
from im_runtime.storage.interfaces import Stores

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"
MAX_GROUP_MEMBERS = 10_000


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


class HttpApi:
    def __init__(
        self,
        *,
        signer: TokenSigner,
        admin_key: str,
        stores: Stores,
        ips: IpListSource,
        ready: Callable[[], Awaitable[bool]] | None = None,
        dev_login: bool = False,
        static_dir: Path | None = STATIC_DIR,
    ) -> None:
        self.signer = signer
        self.admin_key = admin_key
        self.stores = stores
        self.ips = ips
        self.ready = ready
        self.dev_login = dev_login
        self.static_dir = static_dir

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20, middlewares=[self._errors])
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/v1/iplist", self.get_iplist)
        r.add_post("/v1/tokens", self.post_token)
        r.add_post("/v1/groups", self.post_group)
        r.add_get("/v1/groups/{group_id}", self.get_group)
        r.add_put("/v1/groups/{group_id}/members", self.put_members)
        r.add_delete("/v1/groups/{group_id}/members", self.delete_members)
        r.add_get("/v1/conversations/{conversation_id}/messages", self.get_messages)
        if self.dev_login:
            r.add_post("/v1/dev/login", self.post_dev_login)
        if self.static_dir is not None and (self.static_dir / "index.html").exists():
            r.add_get("/", self.index)
            r.add_static("/static/", self.static_dir, show_index=False)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("http handler failed", extra={"path": request.path})
            return _error(500, "internal error")

    # ---- auth helpers -------------------------------------------------------------------

    def _bearer(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        return header[len("Bearer ") :].strip()

    def _is_admin(self, request: web.Request) -> bool:
        given = self._bearer(request)
        return given is not None and hmac.compare_digest(given.encode(), self.admin_key.encode())

    async def _json(self, request: web.Request) -> dict | None:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    # ---- health -------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ok = True if self.ready is None else await self.ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")

    # ---- public API ---------------------------------------------------------------------

    async def get_iplist(self, request: web.Request) -> web.Response:
        return web.json_response(iplist(await self.ips.endpoints()))

    async def post_token(self, request: web.Request) -> web.Response:
        if not self._is_admin(request):
            return _error(401, "admin key required")
        return await self._mint(request)

    async def post_dev_login(self, request: web.Request) -> web.Response:
        """All-in-one only: anyone may mint a token for any uid (a laptop demo)."""
        return await self._mint(request)

    async def _mint(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        uid = body.get("uid") if body else None
        if not isinstance(uid, str) or not valid_uid(uid):
            return _error(400, "uid must be 1..128 characters of [A-Za-z0-9_.@-]")
        ttl = body.get("ttl_s") if body else None
        if ttl is not None and (not isinstance(ttl, int) or not 60 <= ttl <= 90 * 24 * 3600):
            return _error(400, "ttl_s must be an integer between 60 and 7776000")
        token = self.signer.mint(uid, ttl_s=ttl)
        return web.json_response({"token": token.token, "expires_at": token.expires_at})

    async def _members_from(self, request: web.Request) -> list[str] | web.Response:
        body = await self._json(request)
        members = body.get("members") if body else None
        if members is None and "uid" in request.query:
            members = [request.query["uid"]]
        if not isinstance(members, list) or not all(isinstance(m, str) and valid_uid(m) for m in members):
            return _error(400, "members must be a list of valid uids")
        if len(members) > MAX_GROUP_MEMBERS:
            return _error(400, f"at most {MAX_GROUP_MEMBERS} members per request")
        return members

    async def post_group(self, request: web.Request) -> web.Response:
        if not self._is_admin(request):
            return _error(401, "admin key required")
        body = await self._json(request)
        group_id = body.get("group_id") if body else None
        if not isinstance(group_id, str) or not valid_uid(group_id):
            return _error(400, "group_id must be 1..128 characters of [A-Za-z0-9_.@-]")
        members = await self._members_from(request)
        if isinstance(members, web.Response):
            return members
        if not await self.stores.groups.create(group_id, members):
            return _error(409, f"group {group_id} exists")
        await members_joined(self.stores, group_id, members)
        return web.json_response({"group_id": group_id, "members": sorted(set(members))}, status=201)

    async def get_group(self, request: web.Request) -> web.Response:
        if not self._is_admin(request):
            return _error(401, "admin key required")
        group_id = request.match_info["group_id"]
        members = await self.stores.groups.members(group_id)
        if members is None:
            return _error(404, f"unknown group {group_id}")
        return web.json_response({"group_id": group_id, "members": sorted(members)})

    async def put_members(self, request: web.Request) -> web.Response:
        return await self._change_members(request, add=True)

    async def delete_members(self, request: web.Request) -> web.Response:
        return await self._change_members(request, add=False)

    async def _change_members(self, request: web.Request, *, add: bool) -> web.Response:
        if not self._is_admin(request):
            return _error(401, "admin key required")
        members = await self._members_from(request)
        if isinstance(members, web.Response):
            return members
        group_id = request.match_info["group_id"]
        groups = self.stores.groups
        changed = await (groups.add_members if add else groups.remove_members)(group_id, members)
        if changed is None:
            return _error(404, f"unknown group {group_id}")
        if add:
            await members_joined(self.stores, group_id, changed)
        return web.json_response({"group_id": group_id, "added" if add else "removed": changed})

    async def get_messages(self, request: web.Request) -> web.Response:
        token = self._bearer(request)
        uid = self.signer.verify(token) if token else None
        if uid is None:
            return _error(401, "a valid user token is required")
        conversation_id = request.match_info["conversation_id"]
        try:
            after_seq = int(request.query.get("after_seq", "0") or 0)
            before_seq = int(request.query.get("before_seq", "0") or 0)
            limit = int(request.query.get("limit", "50") or 50)
        except ValueError:
            return _error(400, "after_seq, before_seq and limit must be integers")
        if after_seq < 0 or before_seq < 0 or limit < 0:
            return _error(400, "after_seq, before_seq and limit must not be negative")
        verdict = await membership(self.stores, uid, conversation_id)
        if verdict is not ErrorCode.OK:
            status = {ErrorCode.BAD_BODY: 400, ErrorCode.NOT_FOUND: 404}.get(verdict, 403)
            return _error(status, refusal(verdict, conversation_id))
        messages, has_more = await history(
            self.stores, conversation_id, after_seq=after_seq, before_seq=before_seq, limit=limit, viewer=uid
        )
        return web.json_response(
            {
                "messages": [MessageToDict(m, preserving_proto_field_name=True) for m in messages],
                "has_more": has_more,
            }
        )

    async def index(self, request: web.Request) -> web.StreamResponse:
        assert self.static_dir is not None
        return web.FileResponse(self.static_dir / "index.html")


async def serve(app: web.Application, host: str, port: int, *, ssl_context=None) -> web.AppRunner:  # type: ignore[no-untyped-def]
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
    await site.start()
    log.info("http listening", extra={"host": host, "port": port, "tls": ssl_context is not None})
    return runner
