"""Alembic environment of the store: online migrations only (both databases support transactional DDL).

The migration runs in one transaction that holds the database's write lock (SQLite: BEGIN IMMEDIATE, set
up by the store's engine; PostgreSQL: an advisory lock), so replicas starting at once on an empty store
queue up, and all but the first find nothing to do."""

import os

import sqlalchemy as sa
from alembic import context

from models.store import Store, metadata, store_url

SCHEMA_LOCK = 727271  # any constant: the advisory lock that stands for "migrating the energyopt schema"

config = context.config
url = store_url(config.attributes.get("store_url") or context.get_x_argument(as_dictionary=True).get("store")
                or os.environ.get("ENERGYOPT_STORE"))
store = Store(url, migrate=False)
try:
    with store.engine.begin() as connection:
        if store.dialect == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
finally:
    store.close()
