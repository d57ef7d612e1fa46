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
    """Bring the store at `url` to `revision` (safe when several processes start at once: see env.py)."""
    from alembic import command

    command.upgrade(config(url), revision)


def current(url: str) -> str | None:
    """The revision the store at `url` is at (None: an empty database)."""
    from alembic.runtime.migration import MigrationContext

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
