"""readings: zones, readings, the store watermark, seeded sources

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "zones",
        sa.Column("zone", sa.String(64), primary_key=True),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("resolution_s", sa.Integer, nullable=False),
        sa.Column("time_zone", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_ts", sa.BigInteger),
        sa.Column("readings", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_zones_region", "zones", ["region"])
    op.create_table(
        "readings",
        sa.Column("zone", sa.String(64), sa.ForeignKey("zones.zone"), primary_key=True),
        sa.Column("ts", sa.BigInteger, primary_key=True),
        sa.Column("value", sa.Float(53), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_readings_version", "readings", ["version"])
    state = op.create_table(
        "store_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("watermark", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(state, [{"id": 1, "watermark": 0}])
    op.create_table(
        "sources",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("ingested_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("sources", "store_state", "readings", "zones"):
        op.drop_table(table)
