"""zones: the absurd-value rule's reference median, kept per day

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("zones") as batch:
        batch.add_column(sa.Column("reference_day", sa.BigInteger))
        batch.add_column(sa.Column("reference_median", sa.Float(53)))


def downgrade() -> None:
    with op.batch_alter_table("zones") as batch:
        batch.drop_column("reference_median")
        batch.drop_column("reference_day")
