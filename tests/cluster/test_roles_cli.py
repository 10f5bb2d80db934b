"""Role settings: config file < environment < flags (docs/cluster.md)."""
from __future__ import annotations

from im_runtime.cli import build_parser
from im_runtime.roles import _COMMON, _STORES, _settings


def test_config_file_then_environment_then_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "imstack.env"
    cfg.write_text("# comment\nIMSTACK_ZK=zk-from-file:2181\nIMSTACK_MONGO_DB=from_file\nIMSTACK_REDIS_URL=redis://file:6379/0\n")
    for name in ("IMSTACK_ZK", "IMSTACK_MONGO_DB", "IMSTACK_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IMSTACK_MONGO_DB", "from_env")
    args = build_parser().parse_args(["dispatch", "--config", str(cfg), "--redis-url", "redis://flag:6379/1", "--link-port", "9200"])
    settings = _settings(args, _COMMON | _STORES | {"--link-port": "link_port"})
    assert settings.zk == "zk-from-file:2181"  # file
    assert settings.mongo_db == "from_env"  # environment beats the file
    assert settings.redis_url == "redis://flag:6379/1"  # flag beats both
    assert settings.link_port == 9200 and isinstance(settings.link_port, int)


def test_every_role_has_a_subcommand():
    parser = build_parser()
    for argv in (["access", "--ws"], ["dispatch"], ["route"], ["cluster", "up"], ["cluster", "down"]):
        assert callable(parser.parse_args(argv).func)


def test_drain_settings_come_from_the_operator_environment(monkeypatch):
    monkeypatch.setenv("IMSTACK_DRAIN_RATE", "50")
    monkeypatch.setenv("IMSTACK_DRAIN_TIMEOUT", "40")
    args = build_parser().parse_args(["access"])
    assert (args.drain_rate, args.grace) == (50.0, 40.0)
    assert build_parser().parse_args(["access", "--drain-rate", "7"]).drain_rate == 7.0
