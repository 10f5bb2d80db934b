"""HMAC-signed user tokens (S5): `v1.<uid b64>.<expires_at>.<signature b64>`.

Stateless, so any route replica holding the key can check any token; compared in constant
time; the uid inside must equal the uid the client claims.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

from im_runtime.protocol.types import valid_uid  # ids are protocol (docs/protocol.md)

DEFAULT_TTL_S = 7 * 24 * 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Token:
    token: str
    expires_at: int


class TokenSigner:
    def __init__(self, key: bytes, *, ttl_s: int = DEFAULT_TTL_S) -> None:
        if len(key) < 16:
            raise ValueError("token key must be at least 16 bytes")
        self._key = key
        self.ttl_s = ttl_s

    def _sign(self, uid: str, expires_at: int) -> bytes:
        return hmac.new(self._key, f"{uid}\n{expires_at}".encode(), hashlib.sha256).digest()

    def mint(self, uid: str, *, ttl_s: int | None = None, now: float | None = None) -> Token:
        if not valid_uid(uid):
            raise ValueError("uid must be 1..128 characters of [A-Za-z0-9_.@-]")
        expires_at = int((now if now is not None else time.time()) + (ttl_s or self.ttl_s))
        sig = self._sign(uid, expires_at)
        return Token(f"v1.{_b64(uid.encode())}.{expires_at}.{_b64(sig)}", expires_at)

    def verify(self, token: str, *, uid: str | None = None, now: float | None = None) -> str | None:
        """The token's uid if it is well formed, correctly signed, unexpired and (when given)
        issued to `uid`; None otherwise."""
        try:
            version, uid_part, expires_part, sig_part = token.split(".")
            if version != "v1":
                return None
            token_uid = _unb64(uid_part).decode()
            expires_at = int(expires_part)
            sig = _unb64(sig_part)
        except (ValueError, UnicodeDecodeError):
            return None
        if not hmac.compare_digest(sig, self._sign(token_uid, expires_at)):
            return None
        if expires_at < (now if now is not None else time.time()):
            return None
        if uid is not None and not hmac.compare_digest(uid.encode(), token_uid.encode()):
            return None
        return token_uid
