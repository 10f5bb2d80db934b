"""The HTTP API of PROTOCOL.md on the route role."""

from im_runtime.client import GROUP


async def test_iplist_least_loaded_ip_addresses(stack):
    async with stack.http.get("/v1/iplist") as resp:
        body = await resp.json()
    assert resp.status == 200 and set(body) >= {"tcp", "ws"}
    (node,) = body["tcp"]
    assert node == {"host": "127.0.0.1", "port": stack.tcp_port, "connections": 0}
    await stack.client("alice")
    async with stack.http.get("/v1/iplist") as resp:
        assert (await resp.json())["tcp"][0]["connections"] == 1


async def test_tokens_need_the_admin_key(stack):
    status, body = await stack.admin("POST", "/v1/tokens", {"uid": "alice"}, key="wrong")
    assert status == 401
    async with stack.http.post("/v1/tokens", json={"uid": "alice"}) as resp:
        assert resp.status == 401
    status, body = await stack.admin("POST", "/v1/tokens", {"uid": "alice"})
    assert status == 200 and body["token"].startswith("v1.") and body["expires_at"] > 0
    for bad in ({"uid": ""}, {"uid": "a:b"}, {}, {"uid": 5}, {"uid": "ok", "ttl_s": 1}):
        status, _ = await stack.admin("POST", "/v1/tokens", bad)
        assert status == 400, bad
    async with stack.http.post(
        "/v1/tokens", data=b"{not json", headers={"Authorization": f"Bearer {stack.settings.admin_key}"}
    ) as resp:
        assert resp.status == 400


async def test_groups_api(stack):
    status, body = await stack.admin("POST", "/v1/groups", {"group_id": "g1", "members": ["alice", "bob"]})
    assert status == 201 and body == {"group_id": "g1", "members": ["alice", "bob"]}
    status, _ = await stack.admin("POST", "/v1/groups", {"group_id": "g1", "members": ["x"]})
    assert status == 409
    status, _ = await stack.admin("POST", "/v1/groups", {"group_id": "g2", "members": "alice"})
    assert status == 400
    status, _ = await stack.admin("POST", "/v1/groups", {"group_id": "g2", "members": ["alice"]}, key="nope")
    assert status == 401
    status, body = await stack.admin("PUT", "/v1/groups/g1/members", {"members": ["carol", "alice"]})
    assert status == 200 and body["added"] == ["carol"]
    status, body = await stack.admin("GET", "/v1/groups/g1")
    assert body["members"] == ["alice", "bob", "carol"]
    status, body = await stack.admin("DELETE", "/v1/groups/g1/members", {"members": ["bob"]})
    assert status == 200 and body["removed"] == ["bob"]
    status, _ = await stack.admin("PUT", "/v1/groups/missing/members", {"members": ["a"]})
    assert status == 404


async def test_conversation_messages_api(stack):
    await stack.group("g1", ["alice", "bob"])
    alice = await stack.client("alice")
    for i in range(4):
        await alice.send("g1", f"m{i}", type=GROUP)
    token = await stack.token("bob")

    async def get(path, tok=token):
        async with stack.http.get(path, headers={"Authorization": f"Bearer {tok}"}) as resp:
            return resp.status, await resp.json()

    status, body = await get("/v1/conversations/g:g1/messages?after_seq=1&limit=2")
    assert status == 200 and body["has_more"] is True
    assert [m["seq"] for m in body["messages"]] == ["2", "3"]  # proto JSON: 64-bit ints are strings
    first = body["messages"][0]
    assert first["from"] == "alice" and first["conversation_id"] == "g:g1" and first["type"] == "GROUP"
    status, body = await get("/v1/conversations/g:g1/messages?before_seq=3")
    assert [m["seq"] for m in body["messages"]] == ["1", "2"]
    assert (await get("/v1/conversations/g:g1/messages", tok="bad"))[0] == 401
    assert (await get("/v1/conversations/g:g1/messages", tok=await stack.token("eve")))[0] == 403
    assert (await get("/v1/conversations/g:nope/messages"))[0] == 404
    assert (await get("/v1/conversations/g:g1/messages?limit=abc"))[0] == 400
    assert (await get("/v1/conversations/weird/messages"))[0] == 400


async def test_health_metrics_and_dev_login(stack):
    async with stack.http.get("/healthz") as resp:
        assert resp.status == 200
    async with stack.http.get("/readyz") as resp:
        assert resp.status == 200
    alice = await stack.client("alice")
    await alice.send("bob", "counted")
    async with stack.http.get("/metrics") as resp:
        text = await resp.text()
    assert 'imstack_connections{kind="tcp"}' in text
    assert 'imstack_messages_in_total{type="single"}' in text and "imstack_send_seconds_bucket" in text
    async with stack.http.post("/v1/dev/login", json={"uid": "zoe"}) as resp:
        body = await resp.json()
    assert resp.status == 200 and stack.app.signer.verify(body["token"], uid="zoe") == "zoe"


async def test_dev_login_is_off_unless_enabled(stack_factory):
    stack = await stack_factory(dev_login=False)
    async with stack.http.post("/v1/dev/login", json={"uid": "zoe"}) as resp:
        assert resp.status in (404, 405)
