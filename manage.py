#!/usr/bin/env python3
"""Herald's one command-line entry: database, roles, tokens and registry look-ups."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent


def _settings() -> Any:
    from service.core.config import Settings

    return Settings.from_env()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def cmd_db(args: argparse.Namespace) -> int:
    from alembic import command

    from service.store.db import engine_url, ensure_database

    url = _settings().database_url
    # as every role connects: with several hosts, the one that takes writes
    target = engine_url(url)
    cfg = alembic_config(target.render_as_string(hide_password=False))
    if args.action == "upgrade":
        if ensure_database(url):
            print(f"created database {target.database}")
        command.upgrade(cfg, args.rev or "head")
    elif args.action == "downgrade":
        command.downgrade(cfg, args.rev or "-1")
    elif args.action == "current":
        command.current(cfg, verbose=True)
    elif args.action == "revision":
        command.revision(cfg, message=args.message, autogenerate=True)
    elif args.action == "new-epoch":  # the log lost continuity: clients must resync
        from service.store import epoch
        from service.store.db import get_engine

        print(epoch.renew(get_engine(url)))
    return 0


def _exec_celery(*argv: str) -> int:
    # exec keeps this PID, so whoever started the role can stop exactly it
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "workers.celery_app", *argv])
    return 0  # pragma: no cover


def cmd_run(args: argparse.Namespace) -> int:
    from service.core.config import ConfigError

    settings = _settings()
    if args.role == "frontend":
        from service.server import run

        run(settings, args.port or 8000)
        return 0
    if args.role == "relay":
        return _run_relay(settings)
    from service.core.config import DEV_SECRET_DIR

    var = DEV_SECRET_DIR  # HERALD_VAR_DIR: beat's schedule lives with the other state
    var.mkdir(parents=True, exist_ok=True)
    if args.role == "worker":
        return _exec_celery("worker", "-Q", settings.task_queue, "-c",
                            str(settings.worker_concurrency), "-l", "info",
                            "-n", f"herald-{os.getpid()}@%h")
    if args.role == "beat":
        schedule = var / f"beat-schedule-{settings.task_queue}"
        return _exec_celery("beat", "-l", "info", "-s", str(schedule))
    if args.role == "flower":
        if settings.flower_basic_auth:
            # Flower reads FLOWER_* variables as its options: the password stays out of
            # argv, which every user of the machine can read (ps)
            os.environ["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
        elif settings.production:
            raise ConfigError("production mode refuses to run Flower without "
                              "HERALD_FLOWER_BASIC_AUTH (user:password)")
        # the broker API URL carries the RabbitMQ password: out of argv as well
        os.environ["FLOWER_BROKER_API"] = settings.rabbitmq_api_url
        return _exec_celery("flower", f"--port={args.port or settings.flower_port}",
                            "--address=" + settings.host)
    raise SystemExit(f"unknown role {args.role}")


def _run_relay(settings: Any) -> int:
    """The outbox relay: a backend's ``herald_outbox`` (HERALD_RELAY_SOURCE) into Herald."""
    import signal
    import socket

    from sqlalchemy.engine import make_url

    from service.bus import make_publisher
    from service.cluster.pipeline import LogPublisher
    from service.cluster.relay import Relay
    from service.core.config import ConfigError
    from service.store.db import get_engine

    if not settings.relay_source:
        raise ConfigError("manage.py run relay needs HERALD_RELAY_SOURCE: the URL of the "
                          "backend database that holds herald_outbox")
    bus = make_publisher(settings.broker_url, settings.exchange, confirm=True,
                         heartbeat_s=settings.broker_heartbeat_s)
    origin = f"relay:{socket.gethostname()}:{os.getpid()}"
    idle = settings.db_tx_idle_timeout_s
    publisher = LogPublisher(get_engine(settings.database_url, 2, idle), bus, origin,
                             targeted=settings.targeted)
    name = make_url(settings.relay_source).database or "outbox"  # for its log lines
    relay = Relay(get_engine(settings.relay_source, 2, idle), publisher.engine, publisher,
                  name, batch=settings.relay_batch)
    signal.signal(signal.SIGTERM, lambda *_: relay.stop())
    signal.signal(signal.SIGINT, lambda *_: relay.stop())
    try:
        relay.run()
    finally:
        bus.close()
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from service.core.auth import issue_token

    print(issue_token(_settings().secret_key, args.user, join=args.join, publish=args.publish,
                      tasks=args.task, ttl_s=args.ttl))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from service.core.envelope import Target, raw_json
    from workers.notify import publisher

    if args.all:
        target = Target.all()
    elif args.group:
        target = Target.group(args.group, args.scope)
    else:
        target = Target.user(args.user)
    msg_id = publisher().publish(target, args.event, raw_json(json.loads(args.data)),
                                 durable=not args.transient)
    print(json.dumps({"id": msg_id}))
    return 0


def _print(rows: Any) -> int:
    print(json.dumps(rows, indent=2, default=str))
    return 0


def cmd_members(args: argparse.Namespace) -> int:
    from service.store import registry
    from service.store.db import get_engine

    engine = get_engine(_settings().database_url)
    return _print(registry.get_members(engine, args.scope, args.group))


def cmd_frontends(args: argparse.Namespace) -> int:
    from service.store import registry
    from service.store.db import get_engine

    return _print(registry.list_frontends(get_engine(_settings().database_url)))


def cmd_connections(args: argparse.Namespace) -> int:
    from service.store import registry
    from service.store.db import get_engine

    return _print(registry.user_connections(get_engine(_settings().database_url), args.user))


def cmd_webhooks(args: argparse.Namespace) -> int:
    from workers.webhooks import send_test

    settings = _settings()
    if not settings.webhook_urls:
        print("no webhook URLs: set HERALD_WEBHOOK_URLS (comma-separated)", file=sys.stderr)
        return 2
    answers = send_test(settings)
    for url, answer in answers:
        print(f"{url}: {answer}")
    return 0 if all(a.startswith("HTTP 2") for _, a in answers) else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="manage.py", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="Alembic migrations")
    db.add_argument("action", choices=["upgrade", "downgrade", "current", "revision",
                                        "new-epoch"])
    db.add_argument("rev", nargs="?")
    db.add_argument("-m", "--message", default="change")
    db.set_defaults(func=cmd_db)

    run = sub.add_parser("run", help="run one role in the foreground")
    run.add_argument("role", choices=["frontend", "worker", "beat", "flower", "relay"])
    run.add_argument("--port", type=int)
    run.set_defaults(func=cmd_run)

    tok = sub.add_parser("token", help="print a client JWT")
    tok.add_argument("--user", required=True)
    tok.add_argument("--join", action="append", default=[], metavar="PATTERN")
    tok.add_argument("--publish", action="append", default=[], metavar="PATTERN")
    tok.add_argument("--task", action="append", default=[], metavar="NAME")
    tok.add_argument("--ttl", type=int, default=3600, metavar="SECONDS")
    tok.set_defaults(func=cmd_token)

    pub = sub.add_parser("publish", help="publish from the shell (durable unless --transient)")
    target = pub.add_mutually_exclusive_group(required=True)
    target.add_argument("--all", action="store_true")
    target.add_argument("--group")
    target.add_argument("--user")
    pub.add_argument("--scope", default="default")
    pub.add_argument("--event", required=True)
    pub.add_argument("--data", default="null")
    pub.add_argument("--transient", action="store_true")
    pub.set_defaults(func=cmd_publish)

    mem = sub.add_parser("members", help="cluster-wide members of a group")
    mem.add_argument("group")
    mem.add_argument("--scope", default="default")
    mem.set_defaults(func=cmd_members)

    fe = sub.add_parser("frontends", help="registered frontends")
    fe.set_defaults(func=cmd_frontends)

    con = sub.add_parser("connections", help="a user's connections")
    con.add_argument("--user", required=True)
    con.set_defaults(func=cmd_connections)

    hook = sub.add_parser("webhooks", help="send a signed sample event to every webhook URL")
    hook.add_argument("action", choices=["test"])
    hook.set_defaults(func=cmd_webhooks)
    return p


def main(argv: list[str] | None = None) -> int:
    from service.core.logs import configure

    configure()
    args = parser().parse_args(argv)
    from service.core.config import ConfigError

    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"herald: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
