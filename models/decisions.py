"""Champion/challenger decisions in the store (`energyopt retrain`, training/retrain.py): both models'
backtest figures and whether the challenger was promoted. Replicas follow the promotions (serving/app.py).

    record_decision / record_promotion   a decision (one committed transaction), or an operator's promotion
    list_decisions                       newest first (ListModelDecisions, `energyopt retrain --list`)
    latest_promotion                     the single-row read every replica polls
    promotions, follow                   the promotions since an id, and where they lead from a bundle

A promotion replaces its champion: a replica follows it when it serves that bundle (the same directory, or
a copy with the same name and version); one without a champion (an operator's) is for every replica.

Built by migration 0003 (models/migrations), never by create_all.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from models.store import Store, metadata

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


@dataclass
class Decision:
    """One champion/challenger decision (a row of model_decisions). Scores: lower is better."""

    champion_name: str
    champion_version: str
    champion_path: str
    challenger_name: str
    challenger_version: str
    challenger_path: str
    metric: str
    champion_score: float
    challenger_score: float
    margin: float
    promoted: bool
    backtest_start: int  # UTC seconds, the first hour backtested
    backtest_end: int  # UTC seconds, the end of the last hour backtested (exclusive)
    detail: dict[str, Any] = field(default_factory=dict)  # both models' full backtest metrics, ...
    decided_at: float = 0.0  # set when recorded (time.time())
    id: int | None = None  # set when recorded

    @property
    def improvement(self) -> float:
        """How much lower the challenger's score is, as a fraction of the champion's (negative: worse)."""
        return 1.0 - self.challenger_score / self.champion_score if self.champion_score else 0.0

    @property
    def manual(self) -> bool:
        return self.metric == MANUAL

    def summary(self) -> str:
        """One line: both figures and the outcome."""
        if self.manual:
            return (f"manual promotion of {self.challenger_name} {self.challenger_version} "
                    f"({self.challenger_path}): replicas swap to it")
        outcome = "PROMOTED" if self.promoted else "not promoted"
        change = self.improvement
        return (f"{self.metric}: champion {self.champion_name} {self.champion_version} {self.champion_score:.4f}, "
                f"challenger {self.challenger_name} {self.challenger_version} {self.challenger_score:.4f} "
                f"({abs(change):.1%} {'better' if change >= 0 else 'worse'}; promotion needs {self.margin:.1%} "
                f"better): {outcome}")


MANUAL = "manual"  # the metric of a promotion an operator made (record_promotion): no backtest figures
_COLUMNS = [c.name for c in decisions_table.columns]


def _decision(row: Any) -> Decision:
    values = dict(zip(_COLUMNS, row))
    detail = values.pop("detail")
    return Decision(**{**values, "promoted": bool(values["promoted"]), "detail": json.loads(detail or "{}")})


def record_decision(store: Store, decision: Decision) -> Decision:
    """Store `decision` (one committed transaction) and return it with its id and decided_at. A promotion
    recorded here is what every replica of the service follows (serving/app.py)."""
    decided_at = decision.decided_at or time.time()
    values = {name: getattr(decision, name) for name in _COLUMNS if name not in ("id", "detail", "decided_at")}
    values.update(decided_at=decided_at, detail=json.dumps(decision.detail, default=str),
                  promoted=bool(decision.promoted), champion_score=float(decision.champion_score),
                  challenger_score=float(decision.challenger_score), margin=float(decision.margin),
                  backtest_start=int(decision.backtest_start), backtest_end=int(decision.backtest_end))
    with store.engine.begin() as conn:
        store._serialize(conn)  # PostgreSQL: writers queue on the store_state row, as ingest does
        new_id = conn.execute(decisions_table.insert().values(**values)
                              .returning(decisions_table.c.id)).scalar_one()
    return replace(decision, id=int(new_id), decided_at=decided_at)


def record_promotion(store: Store, path: str | Path, *, replacing: str | Path | None = None,
                     note: str = "") -> Decision:
    """A promotion without a backtest (an operator's roll-back or roll-forward): every replica swaps to the
    bundle at `path`. `replacing`: the bundle it replaces (a replica started on that bundle follows the
    promotion to this one)."""
    from models.bundle import load_bundle

    target = Path(path).expanduser().resolve()
    bundle = load_bundle(target)  # a bundle that does not load is refused here, not by every replica
    old_name = old_version = old_path = ""
    if replacing is not None:
        old_path = str(Path(replacing).expanduser().resolve())
        try:
            old = load_bundle(old_path)
            old_name, old_version = old.name, old.version
        except ValueError:  # the bundle replaced may be gone: its path is what counts
            pass
    return record_decision(store, Decision(
        champion_name=old_name, champion_version=old_version, champion_path=old_path,
        challenger_name=bundle.name, challenger_version=bundle.version, challenger_path=str(target),
        metric=MANUAL, champion_score=0.0, challenger_score=0.0, margin=0.0, promoted=True,
        backtest_start=0, backtest_end=0, detail={"note": note} if note else {}))


def list_decisions(store: Store, limit: int = 20) -> list[Decision]:
    """The newest `limit` decisions, newest first."""
    query = sa.select(decisions_table).order_by(decisions_table.c.id.desc()).limit(max(1, int(limit)))
    with store.reader.connect() as conn:
        return [_decision(row) for row in conn.execute(query).all()]


@dataclass(frozen=True)
class Promotion:
    """What a replica needs of a promotion: which bundle it replaces, and the bundle to serve instead."""

    id: int
    champion_path: str
    champion_name: str
    champion_version: str
    challenger_path: str
    challenger_name: str
    challenger_version: str

    def replaces(self, path: str, name: str = "", version: str = "") -> bool:
        """Whether a replica serving the bundle at `path` (named `name`, `version`) follows this promotion:
        it replaces that bundle (the same directory, or a copy: the same name and version), or it is an
        operator's promotion of a bundle for every replica (no champion)."""
        if not self.champion_path:
            return True
        return self.champion_path == path or bool(
            self.champion_version and (self.champion_name, self.champion_version) == (name, version))


_PROMOTION = [decisions_table.c[name] for name in Promotion.__dataclass_fields__]


def latest_promotion(store: Store) -> Promotion | None:
    """The newest promotion, or None: the single-row read every replica polls (on the calling thread's own
    connection, as the watermark is read: call it from one thread)."""
    rows = store._read(sa.select(*_PROMOTION).where(decisions_table.c.promoted.is_(True))
                       .order_by(decisions_table.c.id.desc()).limit(1))
    return Promotion(*rows[0]) if rows else None


def promotions(store: Store, after: int = 0) -> list[Promotion]:
    """The promotions with an id above `after`, oldest first."""
    d = decisions_table
    with store.reader.connect() as conn:
        return [Promotion(*row) for row in conn.execute(
            sa.select(*_PROMOTION).where(d.c.promoted.is_(True), d.c.id > int(after)).order_by(d.c.id))]


def follow(chain: list[Promotion], path: str, name: str = "", version: str = "") -> str:
    """The bundle a replica serving `path` (`name`, `version`) serves after the promotions `chain` (oldest
    first): each one that replaces the bundle it serves by then moves it on to that promotion's challenger."""
    for p in chain:
        if p.replaces(path, name, version):
            path, name, version = p.challenger_path, p.challenger_name, p.challenger_version
    return path


def bundle_identity(path: str | Path) -> tuple[str, str]:
    """(name, version) from a bundle's config.json without loading its weights; ("", "") if unreadable."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
        return str(config.get("name", "")), str(config.get("version", ""))
    except (OSError, ValueError):
        return "", ""
