"""what the service issues and finds: the forecast archive, anomaly events, champion/challenger decisions

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "forecasts",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("slot_ts", sa.BigInteger),  # scheduled: the slot (UTC seconds); NULL on demand
        sa.Column("issue_ts", sa.BigInteger, nullable=False),  # first forecast hour, UTC seconds
        sa.Column("issue_time", sa.String(32), nullable=False),  # ...on the region's wall clock (ISO 8601)
        sa.Column("issued_at", sa.Float, nullable=False),
        sa.Column("late", sa.Boolean, nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("horizon", sa.Integer, nullable=False),
        sa.Column("levels", sa.Text, nullable=False),  # JSON list of the quantile levels stored
        sa.Column("watermark", sa.BigInteger, nullable=False),
        sa.Column("fallback_zones", sa.Integer, nullable=False),
        sa.UniqueConstraint("region", "slot_ts", name="uq_forecasts_region_slot"),  # one per region and slot
    )
    op.create_index("ix_forecasts_region_issue", "forecasts", ["region", "issue_ts"])
    op.create_index("ix_forecasts_region_issued", "forecasts", ["region", "issued_at"])
    op.create_table(
        "forecast_zones",
        sa.Column("forecast_id", sa.String(128), sa.ForeignKey("forecasts.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("zone", sa.String(64), primary_key=True),  # a zone, or TOTAL
        sa.Column("position", sa.Integer, nullable=False),  # order in the response
        sa.Column("fallback", sa.Text, nullable=False),
        sa.Column("last_reading", sa.String(40), nullable=False),
    )
    op.create_table(
        "forecast_points",
        sa.Column("forecast_id", sa.String(128), sa.ForeignKey("forecasts.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("zone", sa.String(64), primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),  # 1 = the first forecast hour
        sa.Column("ts", sa.BigInteger),  # the hour forecast, UTC seconds (NULL: a skipped spring-forward hour)
        sa.Column("local", sa.String(32), nullable=False),  # ...as the response named it (wall clock)
        sa.Column("point", sa.Float(53), nullable=False),
    )
    op.create_index("ix_forecast_points_zone_ts", "forecast_points", ["zone", "ts"])
    op.create_table(
        "forecast_quantiles",
        sa.Column("forecast_id", sa.String(128), sa.ForeignKey("forecasts.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("zone", sa.String(64), primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("level", sa.Float(53), primary_key=True),
        sa.Column("value", sa.Float(53), nullable=False),
    )
    op.create_table(
        "anomaly_events",
        sa.Column("id", sa.String(160), primary_key=True),
        sa.Column("zone", sa.String(64), sa.ForeignKey("zones.zone"), nullable=False),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("start_ts", sa.BigInteger, nullable=False),
        sa.Column("end_ts", sa.BigInteger, nullable=False),
        sa.Column("open", sa.Boolean, nullable=False),
        sa.Column("severity", sa.Float(53), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("opened_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_anomaly_events_region_updated", "anomaly_events", ["region", "updated_at"])
    op.create_index("ix_anomaly_events_zone_kind_open", "anomaly_events", ["zone", "kind", "open"])
    op.create_table(
        "scan_state",  # how far the scans on arrival have read each zone
        sa.Column("zone", sa.String(64), sa.ForeignKey("zones.zone"), primary_key=True),
        sa.Column("scanned_ts", sa.BigInteger, nullable=False),  # the last hour scanned (UTC seconds)
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "model_decisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("decided_at", sa.Float, nullable=False),
        sa.Column("champion_name", sa.String(128), nullable=False),
        sa.Column("champion_version", sa.String(64), nullable=False),
        sa.Column("champion_path", sa.Text, nullable=False),
        sa.Column("challenger_name", sa.String(128), nullable=False),
        sa.Column("challenger_version", sa.String(64), nullable=False),
        sa.Column("challenger_path", sa.Text, nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("champion_score", sa.Float(53), nullable=False),
        sa.Column("challenger_score", sa.Float(53), nullable=False),
        sa.Column("margin", sa.Float(53), nullable=False),
        sa.Column("promoted", sa.Boolean, nullable=False),
        sa.Column("backtest_start", sa.BigInteger, nullable=False),
        sa.Column("backtest_end", sa.BigInteger, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),  # JSON: both models' full backtest metrics
    )


def downgrade() -> None:
    for table in ("model_decisions", "scan_state", "anomaly_events", "forecast_quantiles", "forecast_points",
                  "forecast_zones", "forecasts"):
        op.drop_table(table)
