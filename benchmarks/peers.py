"""The accuracy benchmark's peers: what a practitioner would use instead of our deep models, on the same rows.

- `ridge_frame`: ridge regressions per zone and per forecast step, fitted on the training period's 00:00
  origins (pjm_headroom.py's analysis): the zone's last 168 h over their mean, one-hot weekday, month and
  holiday of both target days; `neighbours` adds every zone's last 48 h (the region); with weather, the
  temperature of every forecast hour with its heating and cooling degrees, and of the history's last 24 h.
  The penalty is chosen on the validation period.
- `lightgbm_frame`: LightGBM through `mlforecast`, one global recursive model over the zones: the zone's
  lags and rolling means, calendar, its public holidays, the other zones' load 48 h and 168 h before each
  hour (the region, as far back as a 48 h forecast can read it at every step), and on the NEM the
  temperature. Tuned on the validation period.
- `nhits_frame`: `neuralforecast`'s NHITS with the same inputs, one series per window.

Every peer's intervals are the 10 % and 90 % quantiles of its validation-period errors per forecast step
(relative to its forecast), the same conformal recipe for all of them. The weather of forecast hours is
the observed one (a perfect forecast) or the same realistic forecast our models read
(training.evaluate.WeatherForecastError: its errors depend only on zone and first forecast hour).

mlforecast needs pandas < 3: run the benchmark in a venv with the `bench` extra (see pyproject.toml).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from models.data import Split
from models.features import FeatureSpec, _holiday_dates
from training.evaluate import WeatherForecastError

HISTORY, NEIGHBOUR_HOURS, HORIZON = 168, 48, 48
WINDOW = 336  # the protocol's history: what the recursive and window peers read before each origin
PENALTIES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
HEATING_BASE_C, COOLING_BASE_C = 18.0, 22.0
# NHITS on 2 cores: about a second a step (128 windows of 336 h with 17 inputs an hour); early stopping on
# validation every 100 steps usually ends it before this
NHITS_MAX_STEPS = 500


@dataclass
class Protocol:
    """Everything a peer reads: the hourly grid of each zone's load (and temperature), each zone's
    holidays and where its validation and test periods start."""

    load: pd.DataFrame  # [hours, zones] MW, NaN where a zone has no data
    periods: dict[str, tuple[pd.Timestamp, pd.Timestamp]]  # zone -> (validation start, test start)
    holidays: dict[str, np.ndarray]  # zone -> datetime64[D] holiday dates
    temperature: pd.DataFrame | None = None  # [hours, zones] °C on the same grid
    weather: WeatherForecastError | None = None  # None: the observed weather of forecast hours
    timings: dict[str, dict] = field(default_factory=dict)  # peer -> training seconds, memory, settings
    cache: dict[str, dict] = field(default_factory=dict, repr=False)  # per-zone inputs built once, sliced per window

    @classmethod
    def from_split(cls, split: Split, features: FeatureSpec, weather: WeatherForecastError | None = None
                   ) -> Protocol:
        """From the split the models are scored on, each zone with the holidays `features` give it."""
        periods = split_periods(split)
        return cls.from_series([*split.train, *split.val, *split.test], periods,
                               {zone: features.holidays_of(zone) for zone in periods}, weather)

    @classmethod
    def from_series(cls, series: Sequence, periods: dict, holiday_codes: dict[str, str | None],
                    weather: WeatherForecastError | None = None) -> Protocol:
        """From cleaned series (models.data.clean, or a split's segments, whose context hours repeat hours
        of the segment before), reading the `temperature_c` covariate where present."""
        loads: dict[str, list[pd.Series]] = {}
        temps: dict[str, list[pd.Series]] = {}
        for s in series:
            loads.setdefault(s.zone, []).append(pd.Series(s.load.astype(np.float64), index=s.timestamps))
            if "temperature_c" in s.covariate_names:
                col = s.covariates[:, s.covariate_names.index("temperature_c")].astype(np.float64)
                temps.setdefault(s.zone, []).append(pd.Series(col, index=s.timestamps))
        load = pd.DataFrame({z: _joined(p) for z, p in loads.items()}).sort_index().asfreq("h")
        temperature = None
        if temps:
            temperature = pd.DataFrame({z: _joined(p) for z, p in temps.items()}).reindex(load.index)
        first, last = int(load.index.year.min()), int(load.index.year.max()) + 1
        holidays = {z: (_holiday_dates(code, first, last) if code else np.array([], dtype="datetime64[D]"))
                    for z, code in holiday_codes.items()}
        return cls(load=load, periods=periods, holidays=holidays, temperature=temperature, weather=weather)

    @property
    def zones(self) -> list[str]:
        return list(self.periods)

    def origins(self, zone: str, period: str) -> pd.DatetimeIndex:
        """First forecast hours (00:00) of `zone` in `period` ("val" or "test") with a full history and 48 h."""
        val_start, test_start = self.periods[zone]
        values = self.load[zone].to_numpy()
        missing_before = np.concatenate([[0], np.cumsum(~np.isfinite(values))])  # missing hours before each hour
        hours = np.flatnonzero(self.load.index.hour == 0)
        hours = hours[(hours >= WINDOW) & (hours + HORIZON <= len(values))]
        window_ok = missing_before[hours + HORIZON] == missing_before[hours - WINDOW]
        first = self.load.index[hours]
        in_period = (first >= test_start) if period == "test" else (first >= val_start) & (
            first + pd.Timedelta(hours=HORIZON - 1) < test_start)
        return first[window_ok & in_period]

    def forecast_temperature(self, zone: str, first_hours: pd.DatetimeIndex) -> np.ndarray:
        """Temperature [N, 48] the forecasts issued at `first_hours` read for their forecast hours."""
        positions = self.load.index.get_indexer(first_hours)
        observed = self.temperature[zone].to_numpy()[positions[:, None] + np.arange(HORIZON)]
        if self.weather is None:
            return observed
        return observed + self.weather.errors(zone, first_hours, HORIZON)


def split_periods(split: Split) -> dict[str, tuple[pd.Timestamp, pd.Timestamp]]:
    """zone -> (first validation hour, first test hour) of a split (models.data.split_by_time)."""
    starts: dict[str, dict] = {"val": {}, "test": {}}
    for period, first in starts.items():
        for s in getattr(split, period):
            first[s.zone] = min(first.get(s.zone, s.target_start), s.target_start)
    return {zone: (starts["val"][zone], starts["test"][zone]) for zone in starts["test"]}


def _joined(parts: list[pd.Series]) -> pd.Series:
    joined = pd.concat(parts)
    return joined[~joined.index.duplicated()]


def _started() -> float:
    """The start of a peer's fit: the clock, and the process's peak RSS reset (Linux: clear_refs 5), so the
    peak read at its end is the fit's (with the data the benchmark process holds anyway)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux: the peak since the process started
        pass
    return time.perf_counter()


def _peak_rss_mb() -> float:
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measured(protocol: Protocol, name: str, started: float) -> None:
    protocol.timings[name] = {"train_seconds": round(time.perf_counter() - started, 1),
                              "peak_rss_mb": round(_peak_rss_mb(), 1)}


def _rows(name: str, zone: str, first_hours: pd.DatetimeIndex, point: np.ndarray, low: np.ndarray,
          high: np.ndarray) -> pd.DataFrame:
    """Backtest rows of one zone: point [N, 48] and its relative error quantiles low/high [48]."""
    n = len(first_hours)
    return pd.DataFrame({
        "zone": zone,
        "cutoff": np.repeat(first_hours.to_numpy(), HORIZON),
        "step": np.tile(np.arange(1, HORIZON + 1), n),
        name: point.ravel(),
        f"{name}-q0.1": (point * (1 + low)).ravel(),
        f"{name}-q0.5": point.ravel(),
        f"{name}-q0.9": (point * (1 + high)).ravel(),
    })


def _error_band(actual: np.ndarray, forecast: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """10 % and 90 % quantiles per step of the relative validation errors [N, 48] -> ([48], [48])."""
    relative = actual / forecast - 1.0
    return np.quantile(relative, 0.1, axis=0), np.quantile(relative, 0.9, axis=0)


def _actual(protocol: Protocol, zone: str, first_hours: pd.DatetimeIndex) -> np.ndarray:
    """The load [N, 48] of the forecasts issued at `first_hours`."""
    at = protocol.load.index.get_indexer(first_hours)
    return protocol.load[zone].to_numpy()[at[:, None] + np.arange(HORIZON)]


Forecasts = dict[str, tuple[pd.DatetimeIndex, np.ndarray]]  # zone -> (first forecast hours, point [N, 48] MW)


def _per_convention(protocol: Protocol, name: str, predict: Callable[[str], Forecasts],
                    conventions: dict[str, WeatherForecastError | None], period: str) -> dict[str, pd.DataFrame]:
    """A fitted peer's backtest rows under each weather convention: its band from its validation errors
    under that convention, then its forecasts of `period` (the fit itself reads observed weather only)."""
    frames = {}
    for label, weather in conventions.items():
        protocol.weather = weather
        bands = {zone: _error_band(_actual(protocol, zone, firsts), values)
                 for zone, (firsts, values) in predict("val").items()}
        frames[label] = pd.concat([_rows(name, zone, firsts, values, *bands[zone])
                                   for zone, (firsts, values) in predict(period).items()], ignore_index=True)
    protocol.weather = None
    return frames


# ---------------------------------------------------------------- ridge


def target_day_calendar(first_hours: pd.DatetimeIndex, holiday_dates: np.ndarray) -> np.ndarray:
    """One-hot weekday (7), month (12) and a holiday flag, for each of the two days forecast: [N, 40]."""
    blocks = []
    for day in (first_hours, first_hours + pd.Timedelta(hours=24)):
        blocks += [np.eye(7)[day.day_of_week], np.eye(12)[day.month - 1],
                   np.isin(day.normalize().to_numpy().astype("datetime64[D]"), holiday_dates)[:, None]]
    return np.concatenate(blocks, axis=1).astype(np.float64)


def ridge_design(protocol: Protocol, zone: str, first_hours: pd.DatetimeIndex, *, neighbours: bool,
                 weather: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs [N, F], targets over the level [N, 48] and level [N] of the forecasts issued at `first_hours`."""
    values = protocol.load.to_numpy()
    at = protocol.load.index.get_indexer(first_hours)
    col = protocol.load.columns.get_loc(zone)
    own = values[at[:, None] + np.arange(-HISTORY, HORIZON), col]
    level = own[:, :HISTORY].mean(axis=1, keepdims=True)
    inputs = [own[:, :HISTORY] / level]
    if neighbours:
        window = values[at[:, None] + np.arange(-HISTORY, 0)]  # [N, 168, Z]
        inputs.append((window[:, -NEIGHBOUR_HOURS:] / window.mean(axis=1, keepdims=True)).reshape(len(at), -1))
    inputs.append(target_day_calendar(first_hours, protocol.holidays[zone]))
    if weather:
        ahead = protocol.forecast_temperature(zone, first_hours)
        past = protocol.temperature[zone].to_numpy()[at[:, None] + np.arange(-24, 0)]
        inputs += [ahead / 10, np.maximum(HEATING_BASE_C - ahead, 0) / 10,
                   np.maximum(ahead - COOLING_BASE_C, 0) / 10, past / 10]
    return np.concatenate(inputs, axis=1), own[:, HISTORY:] / level, level[:, 0]


def fit_ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    return np.linalg.solve(xb.T @ xb + penalty * np.eye(xb.shape[1]), xb.T @ y)


def predict_ridge(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], axis=1) @ weights


def ridge_frame(protocol: Protocol, name: str, *, neighbours: bool, weather: bool,
                since: pd.Timestamp | None = None, period: str = "test") -> pd.DataFrame:
    """Backtest rows of one ridge variant on the `period`'s origins; the penalty is chosen per zone on
    validation. `since`: fit only on origins from then on (where every zone of a region has data)."""
    started = _started()
    frames, chosen = [], {}
    for zone in protocol.zones:
        val_start, _ = protocol.periods[zone]
        hours = protocol.load.index[(protocol.load.index.hour == 0)]
        hours = hours[(hours >= protocol.load.index[0] + pd.Timedelta(hours=HISTORY))
                      & (hours + pd.Timedelta(hours=HORIZON - 1) < val_start)]
        if since is not None:
            hours = hours[hours >= since]
        x, y, _ = ridge_design(protocol, zone, hours, neighbours=neighbours, weather=weather)
        usable = np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1)
        val = protocol.origins(zone, "val")
        xv, yv, _ = ridge_design(protocol, zone, val, neighbours=neighbours, weather=weather)
        fits = {p: fit_ridge(x[usable], y[usable], p) for p in PENALTIES}
        penalty = min(fits, key=lambda p: np.abs(predict_ridge(fits[p], xv) - yv).mean())
        chosen[zone] = penalty
        weights = fits[penalty]
        low, high = _error_band(yv, predict_ridge(weights, xv))
        target = protocol.origins(zone, period)
        xt, _, level = ridge_design(protocol, zone, target, neighbours=neighbours, weather=weather)
        frames.append(_rows(name, zone, target, predict_ridge(weights, xt) * level[:, None], low, high))
    _measured(protocol, name, started)
    protocol.timings[name]["penalty"] = chosen
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- LightGBM (mlforecast)

LAGS = (1, 2, 3, 23, 24, 25, 48, 72, 168, 336)
REGION_LAGS = (48, 168)
# tried on the validation period, best kept: shallow-and-many against fewer, larger trees
LIGHTGBM_GRID = (
    {"num_leaves": 63, "learning_rate": 0.05, "n_estimators": 600, "min_child_samples": 50},
    {"num_leaves": 255, "learning_rate": 0.03, "n_estimators": 1000, "min_child_samples": 100},
)


def _exogenous(protocol: Protocol, zone: str) -> pd.DataFrame:
    """The exogenous columns of every hour of `zone`'s grid: holiday, the region's lagged load (each zone
    over its mean) and the observed temperature with its trailing 24 h mean."""
    cache = protocol.cache.setdefault("exogenous", {})
    if zone in cache:
        return cache[zone]
    index = protocol.load.index
    out = pd.DataFrame(index=index)
    out["holiday"] = np.isin(index.normalize().to_numpy().astype("datetime64[D]"),
                             protocol.holidays[zone]).astype(np.float32)
    relative = protocol.load / protocol.load.mean()
    for lag in REGION_LAGS:
        for other in protocol.load.columns:
            out[f"{other}_lag{lag}"] = relative[other].shift(lag).to_numpy(np.float32)
    if protocol.temperature is not None:
        temp = protocol.temperature[zone]
        out["temperature_c"] = temp.to_numpy(np.float32)
        out["temperature_24h_mean"] = temp.rolling(24, min_periods=1).mean().to_numpy(np.float32)
    cache[zone] = out
    return out


def _training_frame(protocol: Protocol) -> pd.DataFrame:
    """Long frame (unique_id, ds, y over the zone's mean, zone code, exogenous) of every zone's hours before
    its validation period; each gap-free run of a zone is a series of its own (lags are read by position)."""
    parts = []
    scale = protocol.load.mean()
    for code, zone in enumerate(protocol.zones):
        val_start, _ = protocol.periods[zone]
        y = protocol.load[zone]
        y = y[y.index < val_start]
        run = y.isna().cumsum()[y.notna()]
        y = y.dropna()
        parts.append(pd.DataFrame({"unique_id": [f"{zone}#{r}" for r in run.to_numpy()], "ds": y.index,
                                   "y": (y / scale[zone]).to_numpy(np.float32), "zone_code": code})
                     .join(_exogenous(protocol, zone).loc[y.index].reset_index(drop=True)))
    return pd.concat(parts, ignore_index=True)


def _window_frames(protocol: Protocol, zone: str, code: int, first_hours: pd.DatetimeIndex
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One series per forecast: its 336 h of history (new_df) and its 48 forecast hours' inputs (X_df),
    the forecast hours reading the forecast temperature."""
    exo = _exogenous(protocol, zone)
    scale = protocol.load.mean()[zone]
    load = protocol.load[zone].to_numpy(np.float64) / scale
    at = protocol.load.index.get_indexer(first_hours)
    rows = (at[:, None] + np.arange(-WINDOW, HORIZON)).ravel()
    frame = exo.iloc[rows].reset_index(names="ds")
    frame.insert(0, "unique_id", np.repeat([f"{zone}@{t:%Y-%m-%d}" for t in first_hours], WINDOW + HORIZON))
    if protocol.temperature is not None:
        ahead = protocol.forecast_temperature(zone, first_hours)  # [N, 48]
        observed = protocol.temperature[zone].to_numpy(np.float64)
        temp = observed[at[:, None] + np.arange(-WINDOW - 23, HORIZON)]
        temp[:, -HORIZON:] = ahead
        mean24 = np.lib.stride_tricks.sliding_window_view(temp, 24, axis=1).mean(axis=2)  # [N, WINDOW + 48]
        frame["temperature_c"] = temp[:, 23:].ravel().astype(np.float32)
        frame["temperature_24h_mean"] = mean24.ravel().astype(np.float32)
    is_past = np.tile(np.arange(WINDOW + HORIZON) < WINDOW, len(first_hours))
    past = frame[is_past].copy()
    past.insert(2, "y", load[rows[is_past]].astype(np.float32))
    past.insert(3, "zone_code", code)
    return past, frame[~is_past]


def _lightgbm_forecasts(forecaster, protocol: Protocol, period: str) -> Forecasts:
    """zone -> (first hours, point forecasts [N, 48] in MW) of a fitted MLForecast on `period`'s origins."""
    out = {}
    histories, futures, firsts = [], [], {}
    for code, zone in enumerate(protocol.zones):
        firsts[zone] = protocol.origins(zone, period)
        h, f = _window_frames(protocol, zone, code, firsts[zone])
        histories.append(h)
        futures.append(f)
    new_df = pd.concat(histories, ignore_index=True)
    predicted = forecaster.predict(h=HORIZON, new_df=new_df, X_df=pd.concat(futures, ignore_index=True))
    column = [c for c in predicted.columns if c not in ("unique_id", "ds")][0]
    predicted = predicted.sort_values(["unique_id", "ds"])
    scale = protocol.load.mean()
    for zone in protocol.zones:
        ids = [f"{zone}@{t:%Y-%m-%d}" for t in firsts[zone]]
        values = predicted.set_index("unique_id").loc[ids, column].to_numpy().reshape(len(ids), HORIZON)
        out[zone] = (firsts[zone], values * scale[zone])
    return out


def lightgbm_frame(protocol: Protocol, conventions: dict[str, WeatherForecastError | None], name: str = "lightgbm",
                   period: str = "test", log: Callable[[str], None] = print) -> dict[str, pd.DataFrame]:
    """Backtest rows of the LightGBM peer on `period`'s origins under each weather convention, its
    settings chosen on validation (with the observed weather)."""
    import lightgbm as lgb
    from mlforecast import MLForecast
    from mlforecast.lag_transforms import RollingMean

    started = _started()
    train = _training_frame(protocol)

    def forecaster(params: dict) -> MLForecast:
        model = lgb.LGBMRegressor(objective="l1", subsample=0.8, subsample_freq=1, colsample_bytree=0.8,
                                  n_jobs=2, verbose=-1, random_state=0, **params)
        return MLForecast(models={name: model}, freq="h", lags=list(LAGS),
                          lag_transforms={1: [RollingMean(24)], 24: [RollingMean(168)]},
                          date_features=["hour", "dayofweek", "month", "dayofyear"], num_threads=2)

    best = None
    protocol.weather = None
    for params in LIGHTGBM_GRID:
        fc = forecaster(params).fit(train, static_features=["zone_code"])
        val = _lightgbm_forecasts(fc, protocol, "val")
        mae = np.mean([np.abs(_actual(protocol, zone, firsts) - values).mean() for zone, (firsts, values)
                       in val.items()])
        log(f"  {name} {params}: validation MAE {mae:.1f} MW")
        if best is None or mae < best[0]:
            best = (mae, params, fc)
    _, params, fc = best
    _measured(protocol, name, started)
    protocol.timings[name]["params"] = params
    return _per_convention(protocol, name, lambda which: _lightgbm_forecasts(fc, protocol, which), conventions,
                           period)


# ---------------------------------------------------------------- NHITS (neuralforecast)


def _nhits_inputs(protocol: Protocol, zone: str) -> pd.DataFrame:
    """NHITS's per-hour inputs of `zone`'s grid: calendar (sine and cosine of hour, weekday, day of year),
    holiday and temperature known ahead; every zone's load at the hour (over its mean) over the history."""
    cache = protocol.cache.setdefault("nhits_inputs", {})
    if zone in cache:
        return cache[zone]
    index = protocol.load.index
    exo = _exogenous(protocol, zone)
    out = pd.DataFrame(index=index)
    for name, angle in (("hour", 2 * np.pi * index.hour / 24), ("dow", 2 * np.pi * index.dayofweek / 7),
                        ("doy", 2 * np.pi * (index.dayofyear - 1) / 365.25)):
        out[f"{name}_sin"], out[f"{name}_cos"] = np.sin(angle).astype(np.float32), np.cos(angle).astype(np.float32)
    out["holiday"] = exo["holiday"]
    if protocol.temperature is not None:
        out["temperature_c"] = exo["temperature_c"] / 10
    relative = protocol.load / protocol.load.mean()
    for other in protocol.load.columns:
        out[f"{other}_load"] = relative[other].fillna(0.0).to_numpy(np.float32)  # zones without data yet read 0
    cache[zone] = out
    return out


def nhits_frame(protocol: Protocol, conventions: dict[str, WeatherForecastError | None], name: str = "nhits",
                period: str = "test", max_steps: int | None = None,
                log: Callable[[str], None] = print) -> dict[str, pd.DataFrame]:
    """Backtest rows of neuralforecast's NHITS on `period`'s origins under each weather convention: one
    global model over the zones, early-stopped on the validation period (the 120 or 365 days before test)."""
    import logging

    from neuralforecast import NeuralForecast
    from neuralforecast.models import NHITS

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    max_steps = max_steps or NHITS_MAX_STEPS
    started = _started()
    scale = protocol.load.mean()
    futr = ["hour_sin", "hour_cos", "dow_sin", "dow_cos", "doy_sin", "doy_cos", "holiday"]
    if protocol.temperature is not None:
        futr.append("temperature_c")
    hist = [f"{z}_load" for z in protocol.load.columns]
    static = pd.DataFrame(np.eye(len(protocol.zones), dtype=np.float32), columns=[f"is_{z}" for z in protocol.zones])
    parts, val_hours = [], set()
    for zone in protocol.zones:
        val_start, test_start = protocol.periods[zone]
        y = protocol.load[zone][lambda s: s.index < test_start]
        y = y.loc[y.first_valid_index():].interpolate(limit_area="inside")  # PJM's rare gaps > 6 h, filled
        val_hours.add(int((y.index >= val_start).sum()))
        parts.append(pd.DataFrame({"unique_id": zone, "ds": y.index, "y": (y / scale[zone]).to_numpy(np.float32)})
                     .join(_nhits_inputs(protocol, zone).loc[y.index].reset_index(drop=True)))
    if len(val_hours) != 1:
        raise ValueError(f"NHITS needs one validation length for every zone, got {sorted(val_hours)} hours")
    model = NHITS(h=HORIZON, input_size=WINDOW, futr_exog_list=futr, hist_exog_list=hist,
                  stat_exog_list=list(static.columns), mlp_units=3 * [[256, 256]], scaler_type="robust",
                  max_steps=max_steps, val_check_steps=100, early_stop_patience_steps=3, batch_size=len(protocol.zones),
                  step_size=24,
                  windows_batch_size=128, inference_windows_batch_size=256, learning_rate=1e-3, random_seed=0,
                  accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, logger=False,
                  enable_checkpointing=False, alias=name)
    nf = NeuralForecast(models=[model], freq="h")
    nf.fit(pd.concat(parts, ignore_index=True), static_df=static.assign(unique_id=protocol.zones),
           val_size=val_hours.pop())
    log(f"  {name}: trained in {time.perf_counter() - started:.0f} s")

    def forecasts(which: str) -> Forecasts:
        history, future, statics, firsts = [], [], [], {}
        for k, zone in enumerate(protocol.zones):
            firsts[zone] = protocol.origins(zone, which)
            inputs = _nhits_inputs(protocol, zone)
            at = protocol.load.index.get_indexer(firsts[zone])
            rows = (at[:, None] + np.arange(-WINDOW, HORIZON)).ravel()
            frame = inputs.iloc[rows].reset_index(names="ds")
            ids = [f"{zone}@{t:%Y-%m-%d}" for t in firsts[zone]]
            frame.insert(0, "unique_id", np.repeat(ids, WINDOW + HORIZON))
            if protocol.temperature is not None:  # the forecast hours read the forecast temperature
                temp = frame["temperature_c"].to_numpy().reshape(len(ids), -1)
                temp[:, WINDOW:] = protocol.forecast_temperature(zone, firsts[zone]) / 10
                frame["temperature_c"] = temp.ravel()
            is_past = np.tile(np.arange(WINDOW + HORIZON) < WINDOW, len(ids))
            past = frame[is_past].copy()
            past.insert(2, "y", (protocol.load[zone].to_numpy()[rows[is_past]] / scale[zone]).astype(np.float32))
            history.append(past)
            future.append(frame.loc[~is_past, ["unique_id", "ds", *futr]])
            statics.append(pd.DataFrame(np.repeat(static.iloc[[k]].to_numpy(), len(ids), axis=0),
                                        columns=static.columns).assign(unique_id=ids))
        predicted = nf.predict(df=pd.concat(history, ignore_index=True), futr_df=pd.concat(future, ignore_index=True),
                               static_df=pd.concat(statics, ignore_index=True))
        predicted = predicted.reset_index() if "unique_id" not in predicted.columns else predicted
        predicted = predicted.set_index("unique_id").sort_values("ds", kind="stable")
        out = {}
        for zone in protocol.zones:
            ids = [f"{zone}@{t:%Y-%m-%d}" for t in firsts[zone]]
            values = predicted.loc[ids, name].to_numpy().reshape(len(ids), HORIZON) * scale[zone]
            out[zone] = (firsts[zone], values)
        return out

    _measured(protocol, name, started)
    protocol.timings[name]["max_steps"] = max_steps
    return _per_convention(protocol, name, forecasts, conventions, period)
