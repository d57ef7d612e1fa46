"""weather: stations, the zones each station serves, observations and issued forecasts

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "weather_stations",
        sa.Column("station", sa.String(64), primary_key=True),
        sa.Column("time_zone", sa.String(64), nullable=False),  # the clock of naive times sent for it
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "zone_stations",  # which station's weather a zone reads (one per zone); the zone need not exist yet
        sa.Column("zone", sa.String(64), primary_key=True),
        sa.Column("station", sa.String(64), sa.ForeignKey("weather_stations.station"), nullable=False),
    )
    op.create_table(
        "weather_observations",
        sa.Column("station", sa.String(64), sa.ForeignKey("weather_stations.station"), primary_key=True),
        sa.Column("variable", sa.String(32), primary_key=True),  # e.g. temperature_c: the name carries the unit
        sa.Column("ts", sa.BigInteger, primary_key=True),  # start of the hour, UTC seconds
        sa.Column("value", sa.Float(53), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),  # 0 first, +1 per correction
    )
    op.create_table(
        "weather_forecasts",
        sa.Column("station", sa.String(64), sa.ForeignKey("weather_stations.station"), primary_key=True),
        sa.Column("variable", sa.String(32), primary_key=True),
        sa.Column("issued_ts", sa.BigInteger, primary_key=True),  # when the forecast was issued, UTC seconds
        sa.Column("ts", sa.BigInteger, primary_key=True),  # the hour it is valid for, UTC seconds
        sa.Column("value", sa.Float(53), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("weather_forecasts", "weather_observations", "zone_stations", "weather_stations"):
        op.drop_table(table)
