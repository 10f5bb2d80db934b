from im_runtime.route.tokens import TokenSigner, valid_uid

KEY = b"k" * 32


def test_mint_and_verify():
    signer = TokenSigner(KEY)
    token = signer.mint("alice", now=1000)
    assert signer.verify(token.token, uid="alice", now=1001) == "alice"
    assert token.expires_at == 1000 + signer.ttl_s


def test_wrong_uid_expired_tampered_and_other_key_refused():
    signer = TokenSigner(KEY)
    token = signer.mint("alice", ttl_s=60, now=1000).token
    assert signer.verify(token, uid="bob", now=1001) is None
    assert signer.verify(token, uid="alice", now=1061) is None
    assert signer.verify(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1], now=1001) is None
    assert TokenSigner(b"x" * 32).verify(token, now=1001) is None
    for garbage in ("", "v1", "v2.a.b.c", "v1.!!.1.x", "v1.YWxpY2U.notanumber.x"):
        assert signer.verify(garbage) is None


def test_uid_rules():
    assert valid_uid("alice") and valid_uid("a.b-c_d@e")
    assert not valid_uid("") and not valid_uid("a:b") and not valid_uid("x" * 129) and not valid_uid("a b")
    assert not valid_uid("alice\n") and valid_uid("alice")  # no trailing newline, even after a cache hit
