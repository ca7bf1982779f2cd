"""How Herald reads HERALD_DATABASE_URL: one host or several (a primary and standbys)."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

from service.store import durability
from service.store.db import engine_url, is_read_only

REPEATED = ("postgresql+psycopg://herald:pw@/herald_x?host=db1:5433&host=db2:5434"
            "&target_session_attrs=read-write")
LIBPQ = "postgresql+psycopg://herald@/herald_x?host=db1,db2&port=5433,5434"


def conninfo(url: str) -> dict[str, object]:
    """What the psycopg dialect hands psycopg.connect for ``url`` as Herald uses it."""
    return dict(PGDialect_psycopg().create_connect_args(engine_url(url))[1])


@pytest.mark.parametrize("url", [REPEATED, LIBPQ])
def test_both_multi_host_forms_reach_libpq_as_host_and_port_lists(url: str) -> None:
    info = conninfo(url)
    assert info["host"] == "db1,db2" and info["port"] == "5433,5434"
    assert info["dbname"] == "herald_x"
    assert info["target_session_attrs"] == "read-write"


def test_a_session_must_take_writes_unless_the_url_says_otherwise() -> None:
    assert conninfo("postgresql+psycopg://h@db1:5432/x")["target_session_attrs"] == "read-write"
    assert conninfo(LIBPQ + "&target_session_attrs=primary")["target_session_attrs"] == "primary"


@pytest.mark.parametrize("url", [REPEATED, LIBPQ])
def test_renaming_the_database_keeps_every_host(url: str) -> None:
    # ensure_database and drop_database go through the maintenance database this way
    info = dict(PGDialect_psycopg().create_connect_args(
        engine_url(url).set(database="postgres"))[1])
    assert (info["host"], info["port"], info["dbname"]) == ("db1,db2", "5433,5434", "postgres")
    assert info["target_session_attrs"] == "read-write"


def test_the_url_given_to_alembic_parses_back_to_the_same_hosts() -> None:
    # manage.py renders it into alembic's configuration and env.py parses it again
    rendered = engine_url(REPEATED).render_as_string(hide_password=False)
    assert conninfo(rendered) == conninfo(REPEATED)
    assert conninfo(rendered)["password"] == "pw"


def test_a_read_only_server_is_told_apart_from_other_errors() -> None:
    assert is_read_only(psycopg.errors.ReadOnlySqlTransaction("read-only"))
    assert not is_read_only(psycopg.errors.UniqueViolation("dup"))
    assert not is_read_only(ValueError("x"))


def test_commit_levels_are_checked_before_they_reach_sql() -> None:
    assert durability.statement(durability.LOG) == "SET LOCAL synchronous_commit = on"
    assert durability.statement(durability.REGISTRY).endswith("= local")
    with pytest.raises(ValueError):
        durability.statement("on; DROP TABLE messages")
