"""Settings from environment variables (docs/contracts.md) with CLI flags layered on top."""
from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass
class Settings:
    host: str = field(default_factory=lambda: env("IMSTACK_LISTEN_HOST", "127.0.0.1"))
    advertise_host: str = field(default_factory=lambda: env("IMSTACK_ADVERTISE_HOST", "127.0.0.1"))
    http_port: int = field(default_factory=lambda: int(env("IMSTACK_HTTP_PORT", "8080")))
    tcp_port: int = field(default_factory=lambda: int(env("IMSTACK_TCP_PORT", "9000")))
    ws_port: int = field(default_factory=lambda: int(env("IMSTACK_WS_PORT", "9001")))
    link_port: int = field(default_factory=lambda: int(env("IMSTACK_LINK_PORT", "9100")))
    grpc_port: int = field(default_factory=lambda: int(env("IMSTACK_GRPC_PORT", "50051")))
    metrics_port: int = field(default_factory=lambda: int(env("IMSTACK_METRICS_PORT", "9090")))
    admin_key: str = field(default_factory=lambda: env("IMSTACK_ADMIN_KEY", ""))
    token_key: str = field(default_factory=lambda: env("IMSTACK_TOKEN_KEY", ""))
    tls_cert: str = field(default_factory=lambda: env("IMSTACK_TLS_CERT", ""))
    tls_key: str = field(default_factory=lambda: env("IMSTACK_TLS_KEY", ""))
    node_id: str = field(default_factory=lambda: env("IMSTACK_NODE_ID", socket.gethostname()))
    zk: str = field(default_factory=lambda: env("IMSTACK_ZK", "127.0.0.1:2181"))
    zk_root: str = field(default_factory=lambda: env("IMSTACK_ZK_ROOT", "/imstack/default"))
    redis_url: str = field(default_factory=lambda: env("IMSTACK_REDIS_URL", "redis://127.0.0.1:6379/0"))
    mongo_url: str = field(default_factory=lambda: env("IMSTACK_MONGO_URL", "mongodb://127.0.0.1:27017"))
    mongo_db: str = field(default_factory=lambda: env("IMSTACK_MONGO_DB", "imstack"))
    route_grpc: str = field(default_factory=lambda: env("IMSTACK_ROUTE_GRPC", "127.0.0.1:50051"))
    idle_timeout: float = field(default_factory=lambda: float(env("IMSTACK_IDLE_TIMEOUT", "30")))
    max_body: int = field(default_factory=lambda: int(env("IMSTACK_MAX_BODY", "65536")))
    id_mode: str = field(default_factory=lambda: env("IMSTACK_ID_MODE", "snowflake"))
    worker_id: int = field(default_factory=lambda: int(env("IMSTACK_WORKER_ID", "0")))
    rate_per_s: float = field(default_factory=lambda: float(env("IMSTACK_RATE_PER_S", "2000")))
    max_write_buffer: int = field(default_factory=lambda: int(env("IMSTACK_MAX_WRITE_BUFFER", str(1 << 20))))
    ws_origins: str = field(default_factory=lambda: env("IMSTACK_WS_ORIGINS", ""))
    dev_login: bool = field(default_factory=lambda: env("IMSTACK_DEV_LOGIN", "") in ("1", "true", "yes"))
    # S18 timeline (docs/storage.md): entries and devices unseen for longer go; devices per user
    timeline_retention_s: float = field(default_factory=lambda: float(env("IMSTACK_TIMELINE_RETENTION", str(7 * 24 * 3600))))
    max_devices: int = field(default_factory=lambda: int(env("IMSTACK_MAX_DEVICES", "16")))
    recall_window_s: float = field(default_factory=lambda: float(env("IMSTACK_RECALL_WINDOW", "120")))
    # offline push for phones (docs/protocol.md, "Offline push webhook"); off without a URL
    push_webhook_url: str = field(default_factory=lambda: env("IMSTACK_PUSH_WEBHOOK_URL", ""))
    push_webhook_preview: bool = field(default_factory=lambda: env("IMSTACK_PUSH_WEBHOOK_PREVIEW", "1") not in ("0", "false", "no"))
    push_webhook_token: str = field(default_factory=lambda: env("IMSTACK_PUSH_WEBHOOK_TOKEN", ""))
    push_webhook_attempts: int = field(default_factory=lambda: int(env("IMSTACK_PUSH_WEBHOOK_ATTEMPTS", "5")))
    push_webhook_queue: int = field(default_factory=lambda: int(env("IMSTACK_PUSH_WEBHOOK_QUEUE", "10000")))

    def ensure_keys(self) -> bool:
        """Fills in missing keys with random ones; True when the admin key was generated."""
        generated = False
        if not self.admin_key:
            self.admin_key = secrets.token_urlsafe(24)
            generated = True
        if not self.token_key:
            self.token_key = secrets.token_urlsafe(32)
        return generated

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key)
