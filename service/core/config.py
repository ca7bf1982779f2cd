"""Herald configuration: every setting, read from ``HERALD_*`` environment variables.

One frozen dataclass is the single source of truth. Each field has a safe default;
``Settings.from_env()`` reads the environment, and production mode refuses to start
without the secrets that development mode may generate.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from service.core.envvars import ConfigError as ConfigError
from service.core.envvars import dev_value, env_bool, env_float, env_int, env_list
from service.core.routes import ROUTINGS

log = logging.getLogger(__name__)

DEV_SECRET_DIR = Path(os.environ.get("HERALD_VAR_DIR")
                      or Path(__file__).resolve().parents[2] / "var")  # the checkout's var/
_warned: set[str] = set()


#: Production's shortest accepted HS256 secret and API key.
MIN_SECRET_LEN = 32
MIN_API_KEY_LEN = 32
#: Words that mark a value copied from Herald's examples (compose/, k8s/, the README).
PLACEHOLDER_MARKERS = ("example", "replace-with", "change-me", "changeme", "placeholder")


def is_placeholder(value: str) -> bool:
    """True for a value that looks copied from a published example, not generated."""
    low = value.lower()
    return any(marker in low for marker in PLACEHOLDER_MARKERS)


#: RabbitMQ queue types the Celery task queue may be declared as.
TASK_QUEUE_TYPES = ("classic", "quorum")
#: The longest HERALD_WRITE_DELAY_MS: past a second it is a batch job, not real time.
MAX_WRITE_DELAY_MS = 1000
#: Sockets one frontend is sized for by default (``HERALD_WORKER_CONNECTIONS``).
DEFAULT_WORKER_CONNECTIONS = 20000


@dataclass(frozen=True)
class Settings:
    """All of Herald's settings. Field docs name the environment variable."""

    env: str = "development"  # HERALD_ENV: development | production
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/herald"  # HERALD_DATABASE_URL
    # several nodes of one RabbitMQ cluster: URLs separated by ";" (tried in turn)
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"  # HERALD_BROKER_URL
    # AMQP heartbeat: a silent broker link is declared dead after two of these
    broker_heartbeat_s: float = 10.0  # HERALD_BROKER_HEARTBEAT
    secret_key: str = ""  # HERALD_SECRET_KEY: HS256 key for client tokens
    api_keys: tuple[str, ...] = ()  # HERALD_API_KEYS: comma-separated bearer keys
    allowed_origins: tuple[str, ...] = ()  # HERALD_ALLOWED_ORIGINS: comma-separated; "*" = any
    hello_timeout_s: float = 10.0  # HERALD_HELLO_TIMEOUT
    max_frame_bytes: int = 64 * 1024  # HERALD_MAX_FRAME
    outbox_limit: int = 1024  # HERALD_OUTBOX_LIMIT: queued frames per socket before 1013
    outbox_bytes: int = 1 << 20  # HERALD_OUTBOX_BYTES: queued bytes per socket before 1013
    write_delay_ms: int = 0  # HERALD_WRITE_DELAY_MS: deliveries wait to leave together; 0 off
    hello_max_frames: int = 3  # HERALD_HELLO_MAX_FRAMES: frames before a valid hello, else 4401
    history_ttl_s: int = 24 * 3600  # HERALD_HISTORY_TTL: durable log retention
    heartbeat_s: float = 10.0  # HERALD_HEARTBEAT: frontend liveness and client ping hint
    exchange: str = "herald.fanout"  # HERALD_EXCHANGE: the fanout exchange name
    # targeted: group/user/connection messages reach only frontends holding a recipient
    routing: str = "targeted"  # HERALD_ROUTING: targeted | fanout (core/routes.py)
    task_queue: str = "herald.tasks"  # HERALD_TASK_QUEUE: Celery's task queue
    # quorum: replicated over a RabbitMQ cluster (an existing classic queue must go first)
    task_queue_type: str = "classic"  # HERALD_TASK_QUEUE_TYPE: classic | quorum
    frontend_id: str = ""  # HERALD_FRONTEND_ID: stable id of this frontend (default host-port)
    host: str = "127.0.0.1"  # HERALD_HOST: address the frontend binds
    ws_deflate: bool = False  # HERALD_WS_DEFLATE: permessage-deflate (~100 KiB per socket)
    db_pool_size: int = 8  # HERALD_DB_POOL_SIZE: connections per frontend process
    # Postgres ends a session silent this long inside a transaction; 0: never (store/db.py)
    db_tx_idle_timeout_s: float = 10.0  # HERALD_DB_TX_IDLE_TIMEOUT
    log_json: bool = False  # HERALD_LOG_JSON: one JSON object per log line
    log_level: str = "INFO"  # HERALD_LOG_LEVEL
    rate_limit: float = 50.0  # HERALD_RATE_LIMIT: client frames per second per socket
    rate_burst: int = 100  # HERALD_RATE_BURST: frames a socket may send at once
    max_groups: int = 100  # HERALD_MAX_GROUPS: memberships per connection
    max_monitors: int = 100  # HERALD_MAX_MONITORS: monitored groups per connection
    # members a connection's monitors may track in all (each one is state it holds)
    max_monitored_members: int = 10_000  # HERALD_MAX_MONITORED_MEMBERS
    members_limit: int = 1000  # HERALD_MEMBERS_LIMIT: entries per members reply / presence frame
    replay_limit: int = 1000  # HERALD_REPLAY_LIMIT: messages replayed per hello, then gap
    # per-user quotas, per frontend (each is a bucket holding a minute's worth)
    user_replay_per_min: int = 10_000  # HERALD_USER_REPLAY_PER_MIN: replayed messages
    user_durable_per_min: int = 600  # HERALD_USER_DURABLE_PER_MIN: client durable publishes
    user_tasks_per_min: int = 60  # HERALD_USER_TASKS_PER_MIN: task starts by clients
    user_queries_per_min: int = 120  # HERALD_USER_QUERIES_PER_MIN: members / monitor reads
    # sockets per user, cluster-wide; 0: no limit (the default, as Centrifugo's)
    max_user_connections: int = 0  # HERALD_MAX_USER_CONNECTIONS
    public_tasks: tuple[str, ...] = ()  # HERALD_PUBLIC_TASKS: task names clients may start
    worker_concurrency: int = 2  # HERALD_WORKER_CONCURRENCY
    # sockets a frontend is sized for: gunicorn's worker_connections, open files, drain time
    worker_connections: int = DEFAULT_WORKER_CONNECTIONS  # HERALD_WORKER_CONNECTIONS
    flower_port: int = 5555  # HERALD_FLOWER_PORT
    # /metrics (and the probes) on a port of their own; 0: /metrics on the main port
    metrics_port: int = 0  # HERALD_METRICS_PORT
    flower_basic_auth: str = ""  # HERALD_FLOWER_BASIC_AUTH: "user:password" for Flower
    rabbitmq_api_url: str = "http://guest:guest@127.0.0.1:15672/api/"  # HERALD_RABBITMQ_API
    idempotency_ttl_s: int = 24 * 3600  # HERALD_IDEMPOTENCY_TTL: how long a key is remembered
    max_meta: int = 1024  # HERALD_MAX_META: bytes of a membership's presence meta (JSON)
    # webhooks (workers/webhooks.py): none configured, none computed or sent
    webhook_urls: tuple[str, ...] = ()  # HERALD_WEBHOOK_URLS
    webhook_secret: str = ""  # HERALD_WEBHOOK_SECRET (default: HERALD_SECRET_KEY)
    webhook_events: tuple[str, ...] = ()  # HERALD_WEBHOOK_EVENTS; (): all but member.*
    webhook_flap_s: float = 3.0  # HERALD_WEBHOOK_FLAP_S: offline/vacated held this long
    webhook_retry_base_s: float = 2.0  # HERALD_WEBHOOK_RETRY_BASE_S: first retry's delay
    relay_source: str = ""  # HERALD_RELAY_SOURCE: the backend database the outbox relay drains
    relay_batch: int = 100  # HERALD_RELAY_BATCH: outbox rows the relay moves per step
    admin: bool = True  # HERALD_ADMIN: serve the admin console at /admin (API key to sign in)

    @property
    def targeted(self) -> bool:
        return self.routing == "targeted"

    @property
    def production(self) -> bool:
        return self.env == "production"

    @classmethod
    def from_env(cls, *, client: bool = False) -> Settings:
        """Read every setting from the environment and check it is usable; ``client``: for
        a backend's ``service.pg.Herald``, which holds no secret and serves nothing, so the
        roles' checks and development secrets (files under var/) are skipped."""
        env = os.environ.get("HERALD_ENV", "").strip().lower()
        if not env:
            given = [n for n in ("HERALD_SECRET_KEY", "HERALD_API_KEYS") if os.environ.get(n)]
            if given:
                # secrets without a mode look like a deployment that forgot its mode: never
                # guess development there (it hands out demo tokens for any user)
                raise ConfigError(
                    f"{' and '.join(given)} set but HERALD_ENV is not: set "
                    "HERALD_ENV=production for a deployment, or HERALD_ENV=development to "
                    "run the development mode (demo tokens for any user) with these secrets")
            env = "development"
        if env not in {"development", "production"}:
            raise ConfigError(f"HERALD_ENV must be development or production, got {env!r}")
        settings = cls(
            env=env,
            database_url=os.environ.get("HERALD_DATABASE_URL") or cls.database_url,
            broker_url=os.environ.get("HERALD_BROKER_URL") or cls.broker_url,
            broker_heartbeat_s=env_float("HERALD_BROKER_HEARTBEAT", cls.broker_heartbeat_s),
            secret_key=os.environ.get("HERALD_SECRET_KEY", ""),
            api_keys=env_list("HERALD_API_KEYS"),
            allowed_origins=env_list("HERALD_ALLOWED_ORIGINS"),
            hello_timeout_s=env_float("HERALD_HELLO_TIMEOUT", cls.hello_timeout_s),
            max_frame_bytes=env_int("HERALD_MAX_FRAME", cls.max_frame_bytes),
            outbox_limit=env_int("HERALD_OUTBOX_LIMIT", cls.outbox_limit),
            outbox_bytes=env_int("HERALD_OUTBOX_BYTES", cls.outbox_bytes),
            write_delay_ms=env_int("HERALD_WRITE_DELAY_MS", cls.write_delay_ms),
            hello_max_frames=env_int("HERALD_HELLO_MAX_FRAMES", cls.hello_max_frames),
            history_ttl_s=env_int("HERALD_HISTORY_TTL", cls.history_ttl_s),
            heartbeat_s=env_float("HERALD_HEARTBEAT", cls.heartbeat_s),
            exchange=os.environ.get("HERALD_EXCHANGE") or cls.exchange,
            routing=(os.environ.get("HERALD_ROUTING") or cls.routing).lower(),
            task_queue=os.environ.get("HERALD_TASK_QUEUE") or cls.task_queue,
            task_queue_type=(os.environ.get("HERALD_TASK_QUEUE_TYPE")
                             or cls.task_queue_type).lower(),
            frontend_id=os.environ.get("HERALD_FRONTEND_ID", ""),
            host=os.environ.get("HERALD_HOST") or cls.host,
            ws_deflate=env_bool("HERALD_WS_DEFLATE", cls.ws_deflate),
            db_pool_size=env_int("HERALD_DB_POOL_SIZE", cls.db_pool_size),
            db_tx_idle_timeout_s=env_float("HERALD_DB_TX_IDLE_TIMEOUT", cls.db_tx_idle_timeout_s),
            log_json=env_bool("HERALD_LOG_JSON", cls.log_json),
            log_level=(os.environ.get("HERALD_LOG_LEVEL") or cls.log_level).upper(),
            rate_limit=env_float("HERALD_RATE_LIMIT", cls.rate_limit),
            rate_burst=env_int("HERALD_RATE_BURST", cls.rate_burst),
            max_groups=env_int("HERALD_MAX_GROUPS", cls.max_groups),
            max_monitors=env_int("HERALD_MAX_MONITORS", cls.max_monitors),
            max_monitored_members=env_int("HERALD_MAX_MONITORED_MEMBERS",
                                       cls.max_monitored_members),
            members_limit=env_int("HERALD_MEMBERS_LIMIT", cls.members_limit),
            replay_limit=env_int("HERALD_REPLAY_LIMIT", cls.replay_limit),
            user_replay_per_min=env_int("HERALD_USER_REPLAY_PER_MIN", cls.user_replay_per_min),
            user_durable_per_min=env_int("HERALD_USER_DURABLE_PER_MIN", cls.user_durable_per_min),
            user_tasks_per_min=env_int("HERALD_USER_TASKS_PER_MIN", cls.user_tasks_per_min),
            user_queries_per_min=env_int("HERALD_USER_QUERIES_PER_MIN", cls.user_queries_per_min),
            max_user_connections=env_int("HERALD_MAX_USER_CONNECTIONS", cls.max_user_connections),
            public_tasks=env_list("HERALD_PUBLIC_TASKS"),
            worker_concurrency=env_int("HERALD_WORKER_CONCURRENCY", cls.worker_concurrency),
            worker_connections=env_int("HERALD_WORKER_CONNECTIONS", cls.worker_connections),
            flower_port=env_int("HERALD_FLOWER_PORT", cls.flower_port),
            metrics_port=env_int("HERALD_METRICS_PORT", cls.metrics_port),
            flower_basic_auth=os.environ.get("HERALD_FLOWER_BASIC_AUTH", ""),
            rabbitmq_api_url=os.environ.get("HERALD_RABBITMQ_API") or cls.rabbitmq_api_url,
            idempotency_ttl_s=env_int("HERALD_IDEMPOTENCY_TTL", cls.idempotency_ttl_s),
            max_meta=env_int("HERALD_MAX_META", cls.max_meta),
            webhook_urls=env_list("HERALD_WEBHOOK_URLS"),
            webhook_secret=os.environ.get("HERALD_WEBHOOK_SECRET", ""),
            webhook_events=env_list("HERALD_WEBHOOK_EVENTS"),
            webhook_flap_s=env_float("HERALD_WEBHOOK_FLAP_S", cls.webhook_flap_s),
            webhook_retry_base_s=env_float("HERALD_WEBHOOK_RETRY_BASE_S",
                                           cls.webhook_retry_base_s),
            relay_source=os.environ.get("HERALD_RELAY_SOURCE", ""),
            relay_batch=env_int("HERALD_RELAY_BATCH", cls.relay_batch),
            admin=env_bool("HERALD_ADMIN", cls.admin),
        )
        return settings if client else settings.checked()

    def checked(self) -> Settings:
        """Fill development defaults, or refuse to run in production without secrets."""
        for name, value in (("HERALD_HELLO_TIMEOUT", self.hello_timeout_s),
                            ("HERALD_MAX_FRAME", self.max_frame_bytes),
                            ("HERALD_OUTBOX_LIMIT", self.outbox_limit),
                            ("HERALD_HEARTBEAT", self.heartbeat_s),
                            ("HERALD_BROKER_HEARTBEAT", self.broker_heartbeat_s),
                            ("HERALD_HISTORY_TTL", self.history_ttl_s),
                            ("HERALD_RATE_LIMIT", self.rate_limit),
                            ("HERALD_RATE_BURST", self.rate_burst),
                            ("HERALD_MAX_GROUPS", self.max_groups),
                            ("HERALD_OUTBOX_BYTES", self.outbox_bytes),
                            ("HERALD_HELLO_MAX_FRAMES", self.hello_max_frames),
                            ("HERALD_MAX_MONITORS", self.max_monitors),
                            ("HERALD_MAX_MONITORED_MEMBERS", self.max_monitored_members),
                            ("HERALD_MEMBERS_LIMIT", self.members_limit),
                            ("HERALD_REPLAY_LIMIT", self.replay_limit),
                            ("HERALD_USER_REPLAY_PER_MIN", self.user_replay_per_min),
                            ("HERALD_USER_DURABLE_PER_MIN", self.user_durable_per_min),
                            ("HERALD_USER_TASKS_PER_MIN", self.user_tasks_per_min),
                            ("HERALD_USER_QUERIES_PER_MIN", self.user_queries_per_min),
                            ("HERALD_IDEMPOTENCY_TTL", self.idempotency_ttl_s),
                            ("HERALD_MAX_META", self.max_meta),
                            ("HERALD_RELAY_BATCH", self.relay_batch)):
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive finite number")
        if self.routing not in ROUTINGS:
            raise ConfigError(f"HERALD_ROUTING must be targeted or fanout, got {self.routing!r}")
        if self.task_queue_type not in TASK_QUEUE_TYPES:
            raise ConfigError("HERALD_TASK_QUEUE_TYPE must be classic or quorum, got "
                              f"{self.task_queue_type!r}")
        if not 0 <= self.write_delay_ms <= MAX_WRITE_DELAY_MS:
            raise ConfigError(f"HERALD_WRITE_DELAY_MS must be 0 (off) to {MAX_WRITE_DELAY_MS}")
        if not math.isfinite(self.db_tx_idle_timeout_s) or self.db_tx_idle_timeout_s < 0:
            raise ConfigError("HERALD_DB_TX_IDLE_TIMEOUT must be 0 (off) or seconds")
        if self.max_user_connections < 0:
            raise ConfigError("HERALD_MAX_USER_CONNECTIONS must be 0 (no limit) or positive")
        for name, count in (("HERALD_DB_POOL_SIZE", self.db_pool_size),
                            ("HERALD_WORKER_CONCURRENCY", self.worker_concurrency),
                            ("HERALD_WORKER_CONNECTIONS", self.worker_connections)):
            if count < 1:
                raise ConfigError(f"{name} must be at least 1")
        if not 0 < self.flower_port < 65536:
            raise ConfigError("HERALD_FLOWER_PORT must be a TCP port (1-65535)")
        if not 0 <= self.metrics_port < 65536:
            raise ConfigError("HERALD_METRICS_PORT must be a TCP port, or 0 (the main port)")
        if self.production:
            missing = [name for name, value in (("HERALD_SECRET_KEY", self.secret_key),
                                                ("HERALD_API_KEYS", self.api_keys),
                                                ("HERALD_ALLOWED_ORIGINS", self.allowed_origins))
                       if not value]
            if missing:
                raise ConfigError(
                    "production mode (HERALD_ENV=production) refuses to start without "
                    + ", ".join(missing))
            if len(self.secret_key) < MIN_SECRET_LEN:
                raise ConfigError(f"HERALD_SECRET_KEY must be at least {MIN_SECRET_LEN} "
                                  "characters in production")
            short = [i for i, key in enumerate(self.api_keys, 1) if len(key) < MIN_API_KEY_LEN]
            if short:
                raise ConfigError(f"HERALD_API_KEYS: key {short[0]} is shorter than "
                                  f"{MIN_API_KEY_LEN} characters; production needs random keys")
            given: list[tuple[str, str]] = [
                ("HERALD_SECRET_KEY", self.secret_key),
                *(("HERALD_API_KEYS", key) for key in self.api_keys),
                ("HERALD_FLOWER_BASIC_AUTH", self.flower_basic_auth)]
            for name, secret in given:
                if is_placeholder(secret):
                    raise ConfigError(f"{name} holds a published example value; production "
                                      "needs a secret of your own (e.g. openssl rand -hex 32)")
            return self
        if "development" not in _warned:
            _warned.add("development")
            log.warning(
                "DEVELOPMENT MODE (HERALD_ENV=development or unset): POST /demo/token hands "
                "out tokens for any user and the demo tasks can be started. Never expose "
                "this process; a deployment sets HERALD_ENV=production.")
        return dataclasses.replace(
            self,
            secret_key=self.secret_key or dev_value(DEV_SECRET_DIR, "dev-secret-key",
                                                    "HERALD_SECRET_KEY", _warned),
            api_keys=self.api_keys or (dev_value(DEV_SECRET_DIR, "dev-api-key",
                                                 "HERALD_API_KEYS", _warned),),
        )

    def frontend_id_for(self, port: int | None) -> str:
        """The frontend id: configured, else ``<hostname>-<port>`` (stable across restarts)."""
        if self.frontend_id:
            return self.frontend_id
        return f"{socket.gethostname()}-{port if port is not None else os.getpid()}"


#: Environment variables the configuration reads (checked by the compose/k8s test).
ENV_VARS = (
    "HERALD_ENV", "HERALD_DATABASE_URL", "HERALD_BROKER_URL", "HERALD_SECRET_KEY",
    "HERALD_API_KEYS", "HERALD_ALLOWED_ORIGINS", "HERALD_HELLO_TIMEOUT", "HERALD_MAX_FRAME",
    "HERALD_OUTBOX_LIMIT", "HERALD_HISTORY_TTL", "HERALD_HEARTBEAT", "HERALD_EXCHANGE",
    "HERALD_TASK_QUEUE", "HERALD_FRONTEND_ID", "HERALD_HOST", "HERALD_WS_DEFLATE",
    "HERALD_DB_POOL_SIZE", "HERALD_DB_TX_IDLE_TIMEOUT", "HERALD_LOG_JSON",
    "HERALD_WORKER_CONCURRENCY",
    "HERALD_FLOWER_PORT", "HERALD_RABBITMQ_API", "HERALD_VAR_DIR", "HERALD_RATE_LIMIT",
    "HERALD_RATE_BURST", "HERALD_MAX_GROUPS", "HERALD_MAX_USER_CONNECTIONS",
    "HERALD_FLOWER_BASIC_AUTH", "HERALD_LOG_LEVEL", "HERALD_OUTBOX_BYTES",
    "HERALD_WRITE_DELAY_MS",
    "HERALD_HELLO_MAX_FRAMES", "HERALD_MAX_MONITORS", "HERALD_MEMBERS_LIMIT",
    "HERALD_REPLAY_LIMIT", "HERALD_USER_REPLAY_PER_MIN", "HERALD_USER_DURABLE_PER_MIN",
    "HERALD_USER_TASKS_PER_MIN", "HERALD_USER_QUERIES_PER_MIN", "HERALD_PUBLIC_TASKS",
    "HERALD_MAX_MONITORED_MEMBERS", "HERALD_ROUTING", "HERALD_BROKER_HEARTBEAT",
    "HERALD_TASK_QUEUE_TYPE", "HERALD_METRICS_PORT", "HERALD_IDEMPOTENCY_TTL",
    "HERALD_WEBHOOK_URLS", "HERALD_WEBHOOK_SECRET", "HERALD_WEBHOOK_EVENTS",
    "HERALD_WEBHOOK_FLAP_S", "HERALD_WEBHOOK_RETRY_BASE_S", "HERALD_RELAY_SOURCE",
    "HERALD_RELAY_BATCH", "HERALD_MAX_META", "HERALD_ADMIN", "HERALD_WORKER_CONNECTIONS",
)
