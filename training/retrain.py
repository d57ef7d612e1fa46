"""Champion/challenger retraining (`energyopt retrain`): train a challenger on the store's data with the
champion's own training config, backtest both on the store's most recent days, promote the challenger
only if it is better by a margin, and store the decision with both figures (models/decisions.py).

    store readings --store_table--> long table (zone, wall-clock hour, load_mw)
        --training.pipeline.train (or Ray Train)--> challenger bundle, trained on all but the last N days
        --training.evaluate.backtest + score--> champion and challenger on the same origins of those N days
        --> Decision (promoted: challenger < champion x (1 - margin)) --> model_decisions

The split is the pipeline's own (`prepare_data` with the champion's config, `data.test_days` set to the
backtest days): the challenger never trains or validates on the days it is judged on, and both models
forecast the same daily origins there. A stored promotion is what the running service follows: each
replica polls the newest one and swaps to its bundle between batches (serving/app.py).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.bundle import CONFIG_FILE, Bundle, ForecasterBundle, load_bundle, write_checksums
from models.data import MIN_AUTO_VALIDATION_DAYS
from models.decisions import Decision, latest_promotion, promotions, record_decision
from models.hourly import HOUR_S, ZoneTail, wall_clock
from models.series import LOAD, TIMESTAMP, ZONE
from models.store import Store, ZoneSpec
from training.config import AUTOENCODER, TrainConfig, validated

DEFAULT_BACKTEST_DAYS = 28
DEFAULT_METRIC = "mae"
DEFAULT_MARGIN = 0.02  # the challenger must be 2 % better
METRICS = ("mae", "rmse", "mape", "mase", "pinball")  # training.evaluate.score's, all lower-is-better
CHAMPION, CHALLENGER = "champion", "challenger"  # the models' columns in the joint backtest frame


# ---------------------------------------------------------------------------------------------- the data

def store_table(store: Store, zones: Sequence[str] | None = None, *, end: int | None = None) -> pd.DataFrame:
    """The store's readings as the long table training reads: zone, timestamp, load_mw, one row per hour
    of each zone's wall clock (naive, as the bundled PJM data and the models' calendar features are).

    The same conversion as a replica's live history (models/hourly.py): readings averaged to UTC hours (an
    hour missing any of its readings is left out), then put on the zone's wall clock (the hour repeated
    when daylight saving ends is the mean of its two). Gaps stay gaps: training's `clean` repairs them as
    it repairs a file. `zones`: these only (default: every zone); `end`: readings before this time (UTC
    seconds)."""
    specs = store.zones()
    wanted = list(specs) if zones is None else list(zones)
    unknown = sorted(set(wanted) - set(specs))
    if unknown:
        raise ValueError(f"zones {unknown} are not in the store {store.display_url}")
    parts = []
    for zone in wanted:
        rows = store.readings([zone], None, end)
        if not len(rows):
            continue
        ts, values = rows["ts"].to_numpy(), rows["value"].to_numpy()
        spec: ZoneSpec = specs[zone]
        tail = ZoneTail(spec, int(ts.max() - ts.min()) // HOUR_S + 2)  # every reading, on whole hours
        tail.apply(ts, values)
        first, hourly = wall_clock(*tail.hourly(), spec.time_zone)
        keep = np.isfinite(hourly)
        stamps = pd.date_range(first, periods=len(hourly), freq="h")[keep]
        parts.append(pd.DataFrame({ZONE: zone, TIMESTAMP: stamps.as_unit("us"), LOAD: hourly[keep]}))
    if not parts:
        return pd.DataFrame({ZONE: pd.Series(dtype=str), TIMESTAMP: pd.Series(dtype="datetime64[us]"),
                             LOAD: pd.Series(dtype=float)})
    return pd.concat(parts, ignore_index=True)


def _long_enough(table: pd.DataFrame, cfg: TrainConfig) -> tuple[pd.DataFrame, dict[str, str]]:
    """The zones whose hours span the split (validation and backtest days, and a training period of at
    least a few windows), and why the others are left out."""
    # an "auto" validation period (an override) is settled on the data later: count its least here
    val_days = cfg.data.val_days if isinstance(cfg.data.val_days, int) else MIN_AUTO_VALIDATION_DAYS
    need = (val_days + cfg.data.test_days) * 24 + 2 * (cfg.model.input_length + cfg.model.horizon)
    skipped = {}
    for zone, stamps in table.groupby(ZONE)[TIMESTAMP]:
        hours = (stamps.max() - stamps.min()) // pd.Timedelta(hours=1) + 1
        if hours < need:
            skipped[str(zone)] = f"{hours:,} hours held, {need:,} needed"
    return table[~table[ZONE].isin(skipped)].reset_index(drop=True), skipped


# ---------------------------------------------------------------------------------------------- the config

def challenger_config(champion: Bundle, *, backtest_days: int = DEFAULT_BACKTEST_DAYS,
                      overrides: Mapping[str, Any] | None = None, source: str = "") -> TrainConfig:
    """The champion's own training config (model type, hyperparameters, features, seed), with the last
    `backtest_days` as its test period and dotted `overrides` (e.g. {"training.max_epochs": 5})."""
    raw = champion.meta.get("training", {}).get("config")
    if not isinstance(raw, dict):
        raise ValueError(f"bundle {source or champion.name} keeps no training config (config.json "
                         "training.config): it cannot be retrained")
    raw = copy.deepcopy(raw)
    raw.setdefault("data", {})["test_days"] = backtest_days
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    cfg = validated(TrainConfig, raw, f"challenger config (the training config of {source or champion.name}"
                                      f"{' with ' + ', '.join(overrides) if overrides else ''})")
    if cfg.model.type == AUTOENCODER:
        raise ValueError(f"{source or champion.name} is an anomaly detector; retrain compares forecasters")
    if cfg.features.covariates:
        raise ValueError(f"{source or champion.name} reads covariates {cfg.features.covariates}; the store keeps "
                         "load only, so a challenger cannot be trained on it")
    return cfg


def current_champion(store: Store) -> str:
    """The bundle of the store's newest promotion (what the service was last told to serve)."""
    newest = latest_promotion(store)
    if newest is None:
        raise ValueError(f"the store {store.display_url} has no promotion yet: pass --champion DIR (the model "
                         "in service)")
    return newest.challenger_path


# ---------------------------------------------------------------------------------------------- retrain

def retrain(
    store: Store | str | Path | None,
    champion: str | Path | None,
    out: str | Path,
    *,
    backtest_days: int = DEFAULT_BACKTEST_DAYS,
    metric: str = DEFAULT_METRIC,
    margin: float = DEFAULT_MARGIN,
    horizon: int | None = None,
    zones: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    num_workers: int | None = None,
    use_gpu: bool = False,
    record: bool = True,
    tracking_uri: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> Decision:
    """Train a challenger at `out`, backtest it and the `champion` (default: the store's newest promotion)
    on the store's last `backtest_days`, and decide: promoted when its `metric` is below the champion's
    by more than `margin` (a fraction). With `record` the decision is stored, so a promotion reaches the
    running service. `num_workers`: train on Ray Train with that many workers (else in this process).
    `tracking_uri` (training.tracking.resolve_uri's; None: no tracking): the challenger's training is an
    MLflow run of the experiment named after the config, and so is the decision (both models' scores)."""
    from training.evaluate import PROTOCOL_HORIZON, backtest, score
    from training.pipeline import prepare_data, train

    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: choose one of {list(METRICS)}")
    if not 0 <= margin < 1:
        raise ValueError(f"margin {margin}: a fraction of the champion's score, at least 0 and below 1")
    if backtest_days < 2:
        raise ValueError(f"backtest days {backtest_days}: at least 2 (daily origins with {PROTOCOL_HORIZON} h ahead)")
    own = not isinstance(store, Store)
    db = Store.open(store) if own else store
    try:
        champion_path = Path(champion if champion is not None else current_champion(db)).expanduser().resolve()
        out = Path(out).expanduser().resolve()
        if out == champion_path or out in {Path(p.challenger_path) for p in promotions(db)}:
            raise ValueError(f"--out {out} is the champion or a bundle once promoted (a replica may serve it); "
                             "write the challenger to a new directory")
        champ = load_bundle(champion_path)
        if not isinstance(champ, ForecasterBundle):
            raise ValueError(f"{champion_path} holds a {champ.kind}, not a forecaster")
        cfg = challenger_config(champ, backtest_days=backtest_days, overrides=overrides, source=str(champion_path))
        log(f"champion {champ.name} {champ.version} ({champion_path}); challenger: its training config "
            f"({cfg.model.type}) on the store {db.display_url}, all but the last {backtest_days} days")
        table, skipped = _long_enough(store_table(db, zones), cfg)
        for zone, why in skipped.items():
            log(f"  zone {zone} left out: {why}")
        if not len(table):
            raise ValueError(f"no zone of the store {db.display_url} holds enough hours for "
                             f"{cfg.data.val_days} validation and {backtest_days} backtest days")
        with tempfile.TemporaryDirectory(prefix="energyopt-retrain-") as tmp:
            data = Path(tmp) / "store.parquet"
            table.to_parquet(data, index=False)
            if num_workers:
                from training.distributed import train_distributed

                chall = train_distributed(cfg, data, out, num_workers=num_workers, use_gpu=use_gpu, log=log,
                                          tracking_uri=tracking_uri)
            else:
                chall = train(cfg, data, out, progress=progress, log=log, tracking_uri=tracking_uri)
            split, _, _ = prepare_data(cfg, data)  # the pipeline's split again: the same backtest period
        _note_source(out, f"store {db.display_url}")
        h = min(horizon or PROTOCOL_HORIZON, champ.max_horizon, chall.max_horizon)
        frame = backtest(champ, split.test, horizon=h, column=CHAMPION)
        other = backtest(chall, split.test, horizon=h, column=CHALLENGER)
        frame = frame.merge(other.drop(columns="y"), on=["zone", "cutoff", "ds", "step"], how="inner")
        scores = score(frame, [CHAMPION, CHALLENGER], split.train)
        summary = scores["summary"]
        if metric not in summary[CHAMPION]:
            raise ValueError(f"metric {metric!r} is not in the backtest's scores {sorted(summary[CHAMPION])}")
        champion_score, challenger_score = summary[CHAMPION][metric], summary[CHALLENGER][metric]
        start, end = _period(split.test, db.zones())
        decision = Decision(
            champion_name=champ.name, champion_version=champ.version, champion_path=str(champion_path),
            challenger_name=chall.name, challenger_version=chall.version, challenger_path=str(out),
            metric=metric, champion_score=float(champion_score), challenger_score=float(challenger_score),
            margin=float(margin), promoted=bool(challenger_score < champion_score * (1 - margin)),
            backtest_start=start, backtest_end=end,
            detail={"horizon": h, "backtest_days": backtest_days, "zones": sorted(set(frame["zone"])),
                    "origins": int(frame[["zone", "cutoff"]].drop_duplicates().shape[0]),
                    "skipped_zones": skipped, "overrides": dict(overrides or {}), "store": db.display_url,
                    "summary": summary, "rows": scores["rows"],
                    "challenger_training": {k: chall.meta.get("training", {}).get(k)
                                            for k in ("seconds", "best_val_loss")}})
        if record:
            decision = record_decision(db, decision)
        log(decision.summary())
        _track(tracking_uri, cfg.name, decision)
        return decision
    finally:
        if own:
            db.close()


def _track(uri: str | None, experiment: str, decision: Decision) -> None:
    """The decision as an MLflow run `retrain-<challenger version>` beside the challenger's training run:
    params (both bundles, metric, margin, backtest), metrics `champion_<metric>` and `challenger_<metric>`
    for every score, `improvement` and `promoted` (1 or 0), tags `promoted` and `decision.id`. Tracking
    never fails the retraining (training/tracking.py warns instead)."""
    if uri is None:
        return
    from training import tracking

    d = decision
    params = {"champion.path": d.champion_path, "champion.version": d.champion_version,
              "challenger.path": d.challenger_path, "challenger.version": d.challenger_version,
              "metric": d.metric, "margin": d.margin, **{k: d.detail.get(k) for k in ("backtest_days", "horizon",
                                                                                       "store")}}
    logger = tracking.logger_for(experiment, f"retrain-{d.challenger_version}", uri, enabled=True, params=params,
                                 tags={"energyopt.command": "retrain", "bundle.version": d.challenger_version})
    if logger is None:
        return
    summary = d.detail.get("summary", {})
    values = {f"{role}_{k}": float(v) for role in (CHAMPION, CHALLENGER) for k, v in summary.get(role, {}).items()}
    logger.log_values({**values, "improvement": d.improvement, "promoted": float(d.promoted)})
    tracking.end(logger, "FINISHED", tags={"promoted": str(d.promoted).lower(), "decision.id": d.id or ""})


def _period(test: Sequence[Any], specs: Mapping[str, ZoneSpec]) -> tuple[int, int]:
    """UTC seconds of the backtest's first hour and of the end of its last, over every zone."""
    def utc(stamp: pd.Timestamp, zone: str) -> int:
        tz = specs[zone].time_zone if zone in specs else "UTC"
        return int(stamp.tz_localize(tz, ambiguous=True, nonexistent="shift_forward").timestamp())

    starts = [utc(s.target_start, s.zone) for s in test]
    ends = [utc(s.timestamps[-1], s.zone) + HOUR_S for s in test]
    return min(starts), max(ends)


def _note_source(bundle_dir: Path, source: str) -> None:
    """Name the store as the challenger's data source in its config.json (the pipeline saw a temporary
    file of the store's readings; the fingerprint of those readings stays)."""
    path = bundle_dir / CONFIG_FILE
    config = json.loads(path.read_text())
    config.setdefault("data", {})["source"] = source
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2, default=str))
    os.replace(tmp, path)
    write_checksums(bundle_dir)  # the edited config.json is the bundle's now
