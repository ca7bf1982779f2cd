"""Migrations on an empty database: upgrade, downgrade to base, upgrade; models agree."""

from __future__ import annotations

import uuid
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from service.store.db import drop_database
from service.store.models import Base
from service.store.partitions import include_name
from tests.conftest import ENV


def test_upgrade_downgrade_upgrade_and_no_pending_diff(runner: Any) -> None:
    url = ENV["HERALD_DATABASE_URL"] + "_mig_" + uuid.uuid4().hex[:6]
    env = {"HERALD_DATABASE_URL": url}
    try:
        runner("db", "upgrade", env=env)  # creates the missing database too
        engine = create_engine(url)
        tables = set(inspect(engine).get_table_names())
        assert {"frontends", "connections", "memberships", "messages", "tasks"} <= tables

        runner("db", "downgrade", "base", env=env)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}

        runner("db", "upgrade", env=env)
        current = runner("db", "current", env=env).stdout
        assert "(head)" in current

        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(
                conn, opts={"compare_type": True, "include_name": include_name}),
                Base.metadata)
        assert diff == []
        engine.dispose()
    finally:
        drop_database(url)
