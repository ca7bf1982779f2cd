"""service.core.config: Settings.from_env with a controlled environment."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from service.core import config
from service.core.config import ENV_VARS, ConfigError, Settings

GOOD_SECRET = "s" * 32
KEY_1, KEY_2 = "k1" * 16, "k2" * 16


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A clean HERALD_* environment, with development secrets kept under tmp_path."""
    for name in list(os.environ):
        if name.startswith("HERALD_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(config, "DEV_SECRET_DIR", tmp_path / "var")
    return monkeypatch


def _production(env: pytest.MonkeyPatch, **overrides: str) -> None:
    values = {"HERALD_ENV": "production", "HERALD_SECRET_KEY": GOOD_SECRET,
              "HERALD_API_KEYS": f"{KEY_1}, {KEY_2}", "HERALD_ALLOWED_ORIGINS": "https://a.example"}
    values.update(overrides)
    for name, value in values.items():
        env.setenv(name, value)


def test_defaults(env: pytest.MonkeyPatch) -> None:
    s = Settings.from_env()
    expected = dataclasses.replace(Settings(), secret_key=s.secret_key, api_keys=s.api_keys)
    assert s == expected
    assert (s.env, s.production) == ("development", False)
    assert s.database_url == "postgresql+psycopg://postgres@127.0.0.1:5432/herald"
    assert (s.max_frame_bytes, s.outbox_limit, s.history_ttl_s) == (65536, 1024, 86400)
    assert (s.hello_timeout_s, s.heartbeat_s) == (10.0, 10.0)
    assert (s.exchange, s.task_queue, s.allowed_origins) == ("herald.fanout", "herald.tasks", ())


def test_values_are_read(env: pytest.MonkeyPatch) -> None:
    env.setenv("HERALD_MAX_FRAME", "2048")
    env.setenv("HERALD_HEARTBEAT", "2.5")
    env.setenv("HERALD_WS_DEFLATE", "Yes")
    env.setenv("HERALD_LOG_JSON", "0")
    env.setenv("HERALD_ALLOWED_ORIGINS", " https://a , ,https://b ")
    env.setenv("HERALD_EXCHANGE", "x.fanout")
    env.setenv("HERALD_OUTBOX_LIMIT", "")  # empty means the default
    env.setenv("HERALD_ENV", "development")
    env.setenv("HERALD_SECRET_KEY", "dev-secret")
    env.setenv("HERALD_API_KEYS", "a,b")
    s = Settings.from_env()
    assert (s.max_frame_bytes, s.heartbeat_s, s.ws_deflate, s.log_json) == (2048, 2.5, True,
                                                                           False)
    assert s.allowed_origins == ("https://a", "https://b")
    assert (s.exchange, s.outbox_limit) == ("x.fanout", 1024)
    assert (s.secret_key, s.api_keys) == ("dev-secret", ("a", "b"))
    assert not (config.DEV_SECRET_DIR / "dev-secret-key").exists()


@pytest.mark.parametrize(("name", "value"), [("HERALD_MAX_FRAME", "64k"),
                                             ("HERALD_OUTBOX_LIMIT", "1.5"),
                                             ("HERALD_DB_POOL_SIZE", "four"),
                                             ("HERALD_HEARTBEAT", "soon")])
def test_invalid_numbers_refused(env: pytest.MonkeyPatch, name: str, value: str) -> None:
    env.setenv(name, value)
    with pytest.raises(ConfigError, match=f"{name} must be an? (integer|number), got '{value}'"):
        Settings.from_env()


@pytest.mark.parametrize("name", ["HERALD_MAX_FRAME", "HERALD_OUTBOX_LIMIT",
                                  "HERALD_HISTORY_TTL", "HERALD_HEARTBEAT",
                                  "HERALD_HELLO_TIMEOUT"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_non_positive_refused(env: pytest.MonkeyPatch, name: str, value: str) -> None:
    env.setenv(name, value)
    with pytest.raises(ConfigError, match=f"{name} must be a positive"):
        Settings.from_env()


@pytest.mark.parametrize(("value", "ok"), [("0", True), ("20", True), ("1000", True),
                                           ("-1", False), ("1001", False)])
def test_write_delay_is_off_by_default_and_bounded(env: pytest.MonkeyPatch, value: str,
                                                   ok: bool) -> None:
    assert Settings.from_env().write_delay_ms == 0
    env.setenv("HERALD_WRITE_DELAY_MS", value)
    if ok:
        assert Settings.from_env().write_delay_ms == int(value)
    else:
        with pytest.raises(ConfigError, match=r"HERALD_WRITE_DELAY_MS must be 0 \(off\) to 1000"):
            Settings.from_env()


def test_unknown_env_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("HERALD_ENV", "staging")
    with pytest.raises(ConfigError, match="HERALD_ENV must be development or production"):
        Settings.from_env()


def test_production_with_everything(env: pytest.MonkeyPatch) -> None:
    _production(env, HERALD_ENV=" Production ")
    s = Settings.from_env()
    assert (s.env, s.production, s.secret_key) == ("production", True, GOOD_SECRET)
    assert (s.api_keys, s.allowed_origins) == ((KEY_1, KEY_2), ("https://a.example",))
    assert not config.DEV_SECRET_DIR.exists()  # nothing generated in production


def test_production_refuses_without_secrets(env: pytest.MonkeyPatch) -> None:
    env.setenv("HERALD_ENV", "production")
    with pytest.raises(ConfigError) as exc:
        Settings.from_env()
    assert str(exc.value) == ("production mode (HERALD_ENV=production) refuses to start "
                              "without HERALD_SECRET_KEY, HERALD_API_KEYS, "
                              "HERALD_ALLOWED_ORIGINS")
    assert not config.DEV_SECRET_DIR.exists()


@pytest.mark.parametrize("missing", ["HERALD_SECRET_KEY", "HERALD_API_KEYS",
                                     "HERALD_ALLOWED_ORIGINS"])
def test_production_names_each_missing_setting(env: pytest.MonkeyPatch, missing: str) -> None:
    _production(env, **{missing: " , "} if missing != "HERALD_SECRET_KEY" else {missing: ""})
    with pytest.raises(ConfigError) as exc:
        Settings.from_env()
    assert str(exc.value).endswith(f"refuses to start without {missing}")


def test_production_short_secret_refused(env: pytest.MonkeyPatch) -> None:
    _production(env, HERALD_SECRET_KEY="s" * 31)
    with pytest.raises(ConfigError, match="at least 32 characters"):
        Settings.from_env()


def test_development_generates_a_secret_once_and_shares_it(env: pytest.MonkeyPatch) -> None:
    first = Settings.from_env()
    secret_file = config.DEV_SECRET_DIR / "dev-secret-key"
    key_file = config.DEV_SECRET_DIR / "dev-api-key"
    assert secret_file.read_text() == first.secret_key
    assert key_file.read_text() == first.api_keys[0]
    assert len(first.api_keys) == 1
    assert len(first.secret_key) >= 32
    assert first.secret_key != first.api_keys[0]
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in config.DEV_SECRET_DIR.iterdir()) == ["dev-api-key",
                                                                       "dev-secret-key"]
    second = Settings.from_env()  # another process of the same checkout
    assert (second.secret_key, second.api_keys) == (first.secret_key, first.api_keys)


def test_development_reads_an_existing_value(env: pytest.MonkeyPatch) -> None:
    config.DEV_SECRET_DIR.mkdir(parents=True)
    (config.DEV_SECRET_DIR / "dev-secret-key").write_text("preset-secret\n")
    env.setenv("HERALD_ENV", "development")
    env.setenv("HERALD_API_KEYS", "k")
    s = Settings.from_env()
    assert (s.secret_key, s.api_keys) == ("preset-secret", ("k",))
    assert not (config.DEV_SECRET_DIR / "dev-api-key").exists()


def test_frontend_id_for(env: pytest.MonkeyPatch) -> None:
    env.setenv("HERALD_FRONTEND_ID", "fe-7")
    assert Settings.from_env().frontend_id_for(8000) == "fe-7"
    env.delenv("HERALD_FRONTEND_ID")
    assert Settings.from_env().frontend_id_for(8000).endswith("-8000")


def test_env_vars_lists_every_variable_the_module_reads() -> None:
    source = Path(config.__file__).read_text()
    read = set(re.findall(r'"(HERALD_[A-Z_]+)"', source.split("ENV_VARS = (")[0]))
    assert read == set(ENV_VARS)
    assert len(ENV_VARS) == len(set(ENV_VARS))


@pytest.mark.parametrize("given", ["HERALD_SECRET_KEY", "HERALD_API_KEYS"])
def test_secrets_without_a_mode_are_refused(env: pytest.MonkeyPatch, given: str) -> None:
    """Secrets but no HERALD_ENV looks like a deployment that forgot its mode: never guess
    development (demo tokens for any user) there."""
    env.setenv(given, "x" * 40)
    with pytest.raises(ConfigError, match=f"{given} set but HERALD_ENV is not"):
        Settings.from_env()
    env.setenv("HERALD_ENV", "development")  # said out loud, it is allowed
    assert not Settings.from_env().production


def test_development_warns_at_every_start(env: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    env.setattr(config, "_warned", set())  # a new process
    with caplog.at_level("WARNING", logger="service.core.config"):
        Settings.from_env()
    assert any("DEVELOPMENT MODE" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("name", "value"), [
    ("HERALD_SECRET_KEY", "EXAMPLE-replace-with-a-random-secret-of-at-least-32-characters"),
    ("HERALD_API_KEYS", f"{KEY_1},EXAMPLE-replace-with-a-random-api-key"),
    ("HERALD_API_KEYS", "please-change-me-please-change-me-0000"),
    ("HERALD_FLOWER_BASIC_AUTH", "admin:EXAMPLE-flower-password")])
def test_production_refuses_published_examples(env: pytest.MonkeyPatch, name: str,
                                               value: str) -> None:
    _production(env, **{name: value})
    with pytest.raises(ConfigError, match=f"{name} holds a published example value"):
        Settings.from_env()


def test_production_refuses_short_api_keys(env: pytest.MonkeyPatch) -> None:
    _production(env, HERALD_API_KEYS=f"{KEY_1},short-key")
    with pytest.raises(ConfigError, match="key 2 is shorter than 32 characters"):
        Settings.from_env()


def test_every_example_secret_in_the_repo_is_refused(env: pytest.MonkeyPatch) -> None:
    """Each secret value the compose and k8s examples publish is refused in production."""
    import yaml

    root = Path(config.__file__).resolve().parents[2] / "compose"
    values: list[tuple[str, str]] = []
    for path in [root / "docker-compose.yml", *sorted((root / "k8s").glob("*.yaml"))]:
        for doc in yaml.safe_load_all(path.read_text()):
            stack = [doc]
            while stack:
                node = stack.pop()
                if isinstance(node, dict):
                    for k, v in node.items():
                        if k in ("HERALD_SECRET_KEY", "HERALD_API_KEYS",
                                 "HERALD_FLOWER_BASIC_AUTH") and isinstance(v, str):
                            values.append((k, v))
                        stack.append(v)
                elif isinstance(node, list):
                    stack.extend(node)
    assert {k for k, _ in values} == {"HERALD_SECRET_KEY", "HERALD_API_KEYS",
                                      "HERALD_FLOWER_BASIC_AUTH"}
    for name, value in values:
        _production(env, **{name: value})
        with pytest.raises(ConfigError):
            Settings.from_env()
        env.delenv(name)


def test_limits_defaults() -> None:
    s = Settings()
    assert (s.outbox_bytes, s.hello_max_frames, s.max_monitors, s.members_limit) == (
        1 << 20, 3, 100, 1000)
    assert (s.replay_limit, s.user_replay_per_min, s.user_durable_per_min,
            s.user_tasks_per_min, s.user_queries_per_min) == (1000, 10_000, 600, 60, 120)
    assert s.max_user_connections == 0  # off, as Centrifugo's


def test_a_frontend_is_sized_by_herald_worker_connections(env: pytest.MonkeyPatch) -> None:
    from service.server import GRACEFUL_TIMEOUT_S, FrontendServer, graceful_timeout_s

    assert Settings.from_env().worker_connections == 20000
    env.setenv("HERALD_WORKER_CONNECTIONS", "50000")
    s = Settings.from_env()
    assert s.worker_connections == 50000
    cfg = FrontendServer(s, 8000).cfg  # gunicorn's configuration, not started
    assert cfg.worker_connections == 50000
    assert cfg.graceful_timeout == graceful_timeout_s(50000) > GRACEFUL_TIMEOUT_S == 35
    env.setenv("HERALD_WORKER_CONNECTIONS", "0")
    with pytest.raises(ConfigError, match="HERALD_WORKER_CONNECTIONS must be at least 1"):
        Settings.from_env()


@pytest.mark.parametrize(("value", "ok"), [("0", True), ("2.5", True), ("-1", False),
                                           ("inf", False)])
def test_the_db_transaction_idle_timeout_is_zero_or_seconds(env: pytest.MonkeyPatch,
                                                            value: str, ok: bool) -> None:
    assert Settings.from_env().db_tx_idle_timeout_s == 10.0
    env.setenv("HERALD_DB_TX_IDLE_TIMEOUT", value)
    if ok:
        assert Settings.from_env().db_tx_idle_timeout_s == float(value)
    else:
        with pytest.raises(ConfigError, match="HERALD_DB_TX_IDLE_TIMEOUT must be 0"):
            Settings.from_env()
