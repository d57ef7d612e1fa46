"""Alembic migrations of the store (`models.store`): the only way its schema is made or changed.

`alembic upgrade head` from the repository root (configured in pyproject.toml's [tool.alembic]; the store
is `-x store=URL_OR_PATH`, else $ENERGYOPT_STORE, else runs/store.db), or `upgrade(url)` from code, which the
service runs at start-up. New tables (issued forecasts, weather, anomaly events) come as new revisions in
`versions/`: `alembic revision -m "..."`.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

SCRIPT_LOCATION = Path(__file__).resolve().parent


def config(url: str | None = None):  # noqa: ANN201 - alembic.config.Config, imported lazily
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url:
        cfg.attributes["store_url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the store at `url` to `revision`. Safe when several processes start at once: the migration
    runs in one transaction that holds the database's write lock (SQLite: BEGIN IMMEDIATE, taken by the
    store's engine set-up; PostgreSQL: an advisory lock), so the others wait and then find nothing to do."""
    from alembic import command

    from models.store import Store

    store = Store(url, migrate=False)
    try:
        with store.engine.begin() as conn:
            if store.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(727271)"))  # any constant: "energyopt schema"
            cfg = config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        store.close()


def current(url: str) -> str | None:
    """The revision the store at `url` is at (None: an empty database)."""
    from alembic.runtime.migration import MigrationContext

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
