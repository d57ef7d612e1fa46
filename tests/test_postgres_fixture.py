"""The PostgreSQL fixtures of conftest.py: a real server, reached through SQLAlchemy and psycopg 3, with
fsync on; postgres_db gives each test a fresh database and drops it afterwards."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

_seen_databases: list[str] = []  # the names postgres_db handed out in this module (order-independent checks)


@pytest.fixture(scope="module")
def leftovers():
    """Connections a test leaves open on purpose, closed only after postgres_db has dropped their database."""
    conns: list[psycopg.Connection] = []
    yield conns
    for conn in conns:
        conn.close()


def _scalar(url: str, query: str) -> object:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(query)).scalar_one()
    finally:
        engine.dispose()


def _roundtrip(url: str) -> list[tuple[int, str]]:
    engine = sa.create_engine(url)
    try:
        assert sa.inspect(engine).get_table_names() == []  # empty to begin with
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE readings (id integer PRIMARY KEY, zone text NOT NULL)"))
            conn.execute(sa.text("INSERT INTO readings VALUES (:id, :zone)"),
                         [{"id": 1, "zone": "Z000"}, {"id": 2, "zone": "Z001"}])
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text("SELECT id, zone FROM readings ORDER BY id"))]
    finally:
        engine.dispose()


def test_postgres_url_is_the_test_database_with_fsync_on(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://")
    assert sa.make_url(postgres_url).get_driver_name() == "psycopg"
    assert _scalar(postgres_url, "SELECT current_database()") == "energyopt_test"
    assert _scalar(postgres_url, "SHOW fsync") == "on"
    assert _scalar(postgres_url, "SHOW synchronous_commit") == "on"
    assert int(_scalar(postgres_url, "SHOW server_version_num")) >= 130000  # DROP DATABASE ... WITH (FORCE)


def _check_fresh_and_earlier_ones_dropped(postgres_url: str, postgres_db: str) -> None:
    name = sa.make_url(postgres_db).database
    assert name != "energyopt_test" and name not in _seen_databases
    earlier = list(_seen_databases)
    _seen_databases.append(name)
    assert _roundtrip(postgres_db) == [(1, "Z000"), (2, "Z001")]
    existing = set(_databases(postgres_url))
    assert name in existing
    assert not existing & set(earlier), "a database of an earlier test was not dropped"


def _databases(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT datname FROM pg_database")).scalars())
    finally:
        engine.dispose()


def test_postgres_db_fresh_database(postgres_url: str, postgres_db: str) -> None:
    _check_fresh_and_earlier_ones_dropped(postgres_url, postgres_db)


def test_postgres_db_another_fresh_database_with_a_connection_left_open(postgres_url: str, postgres_db: str,
                                                                         leftovers: list) -> None:
    _check_fresh_and_earlier_ones_dropped(postgres_url, postgres_db)
    # left open on purpose: the fixture's DROP DATABASE ... WITH (FORCE) ends it
    leftover = psycopg.connect(sa.make_url(postgres_db).set(drivername="postgresql").render_as_string())
    leftovers.append(leftover)
    assert leftover.execute("SELECT count(*) FROM readings").fetchone() == (2,)
