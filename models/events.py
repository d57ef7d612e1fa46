"""Anomaly events in the store: what the scans on arrival found (`serving.scans`), kept with a stable id.

    anomaly_events  id, zone, region, kind, start_ts .. end_ts (UTC seconds, hours, inclusive), open,
                    severity, detail, opened_at, updated_at
    scan_state      per zone: the last hour the scans have read

Built by migration 0003 (models/migrations), never by create_all.
"""

from __future__ import annotations

import sqlalchemy as sa

from models.store import MAX_ZONE_NAME, metadata

EVENT_KINDS = ("detector", "flat_line", "zero_readings")

events_table = sa.Table(
    "anomaly_events", metadata,
    sa.Column("id", sa.String(160), primary_key=True),
    sa.Column("zone", sa.String(MAX_ZONE_NAME), sa.ForeignKey("zones.zone"), nullable=False),
    sa.Column("region", sa.String(MAX_ZONE_NAME), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("start_ts", sa.BigInteger, nullable=False),
    sa.Column("end_ts", sa.BigInteger, nullable=False),
    sa.Column("open", sa.Boolean, nullable=False),
    sa.Column("severity", sa.Float(53), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("opened_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
scan_state_table = sa.Table(
    "scan_state", metadata,
    sa.Column("zone", sa.String(MAX_ZONE_NAME), sa.ForeignKey("zones.zone"), primary_key=True),
    sa.Column("scanned_ts", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
