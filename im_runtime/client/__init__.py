"""Python client SDK for imstack (PROTOCOL.md v1)."""
from im_runtime.client.client import GROUP, SINGLE, AuthFailed, ImClient, RetryPolicy, SendFailed, fetch_iplist
from im_runtime.client.connection import ServerError

__all__ = ["GROUP", "SINGLE", "AuthFailed", "ImClient", "RetryPolicy", "SendFailed", "ServerError", "fetch_iplist"]
