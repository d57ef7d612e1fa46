"""Alembic environment of the store: online migrations only (both databases support transactional DDL)."""

import os

from alembic import context

from models.store import metadata, store_url

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # models.migrations.upgrade: a connection already in a locked transaction
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    from models.migrations import upgrade

    store = (config.attributes.get("store_url") or context.get_x_argument(as_dictionary=True).get("store")
             or os.environ.get("ENERGYOPT_STORE"))
    upgrade(store_url(store))  # the command line: the same locked path


run()
