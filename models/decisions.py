"""Champion/challenger decisions in the store (`energyopt retrain`, training/retrain.py): both models'
backtest figures and whether the challenger was promoted. Replicas follow the newest promotion.

Built by migration 0003 (models/migrations), never by create_all.
"""

from __future__ import annotations

import sqlalchemy as sa

from models.store import metadata

decisions_table = sa.Table(
    "model_decisions", metadata,
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
    sa.Column("detail", sa.Text, nullable=False),
)
