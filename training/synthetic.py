"""Synthetic hourly load with the structure of real load, for tests, benchmarks and scale experiments.

Real data has five zones; models and kernels must also be exercised on thousands. Each zone gets its own
size, climate and habits: a daily shape with a morning and an evening peak, a weekend dip, a yearly
cycle, a temperature covariate (seasonal + daily cycle + persistent weather) that drives load in a
U shape (heating below ~15 C, cooling above ~20 C), and autocorrelated noise. Everything is drawn from
one seeded generator, so the same arguments give the same frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.series import LOAD, TEMPERATURE, TIMESTAMP, ZONE

_WEATHER_PHI_PER_HOUR = 0.99  # weather anomalies last days (e-folding time ~100 h)
_NOISE_PHI_PER_HOUR = 0.9  # load noise lasts hours
_COLDEST_DAY = 20  # day of year with the lowest mean temperature (late January)


def _ar1(rng: np.random.Generator, shape: tuple[int, int], phi: float, std: np.ndarray) -> np.ndarray:
    """AR(1) paths [zones, steps] with stationary standard deviation `std` per zone, started stationary."""
    n_zones, steps = shape
    path = rng.standard_normal((steps, n_zones)) * np.sqrt(1.0 - phi**2)  # shocks; the loop turns them into the path
    path[0] = rng.standard_normal(n_zones)
    for t in range(1, steps):  # a loop over time only; each step is vectorized over zones
        path[t] += phi * path[t - 1]
    return path.T * std[:, None]


def _circular_bump(hour: np.ndarray, centre: float, width: float) -> np.ndarray:
    d = (hour - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def synthetic_load(n_zones: int = 3, hours: int = 24 * 365 * 2, *, start: str | pd.Timestamp = "2020-01-01",
                   seed: int = 0, noise: float = 0.03, freq: str = "h") -> pd.DataFrame:
    """Long table (zone, timestamp, load_mw, temperature_c) of `n_zones` zones "Z000", "Z001", ...,
    `hours` steps of `freq` each, sorted by zone then time.

    `noise` is the standard deviation of the relative (multiplicative) noise.
    """
    if n_zones < 1 or hours < 1 or noise < 0:
        raise ValueError(f"need n_zones >= 1, hours >= 1 and noise >= 0 (got {n_zones}, {hours}, {noise})")
    rng = np.random.default_rng(seed)
    stamps = pd.date_range(start, periods=hours, freq=freq)
    step_hours = pd.Timedelta(stamps.freq).total_seconds() / 3600.0
    hour = stamps.hour.to_numpy() + stamps.minute.to_numpy() / 60.0
    dow = stamps.day_of_week.to_numpy()
    year_angle = 2 * np.pi * (stamps.day_of_year.to_numpy() - 1 + hour / 24.0) / 365.25

    def draw(low: float, high: float) -> np.ndarray:  # one value per zone, as a column
        return rng.uniform(low, high, n_zones)[:, None]

    base = np.exp(draw(np.log(500.0), np.log(20000.0)))
    mean_temp, season_amp, day_amp = draw(6.0, 18.0), draw(8.0, 14.0), draw(3.0, 6.0)
    heating, cooling = draw(0.010, 0.025), draw(0.02, 0.04)  # relative load per degree below 15 C / above 20 C
    morning, evening, night = draw(0.06, 0.15), draw(0.10, 0.25), draw(0.10, 0.20)
    saturday = draw(0.86, 0.95)
    sunday = saturday - draw(0.0, 0.04)
    winter_extra = draw(0.0, 0.05)  # lighting and shorter days, beyond the temperature response

    weather = _ar1(rng, (n_zones, hours), _WEATHER_PHI_PER_HOUR**step_hours, rng.uniform(2.0, 4.0, n_zones))
    temperature = (mean_temp - season_amp * np.cos(year_angle - 2 * np.pi * _COLDEST_DAY / 365.25)
                   + day_amp * np.cos(2 * np.pi * (hour - 15.0) / 24.0) + weather)

    daily = (1.0 - night * np.cos(2 * np.pi * (hour - 4.0) / 24.0)
             + morning * _circular_bump(hour, 8.0, 1.5) + evening * _circular_bump(hour, 19.0, 2.0))
    weekly = np.where(dow == 5, saturday, np.where(dow == 6, sunday, 1.0))
    yearly = 1.0 + winter_extra * np.cos(year_angle)
    weather_response = (1.0 + heating * np.maximum(15.0 - temperature, 0.0)
                        + cooling * np.maximum(temperature - 20.0, 0.0))
    ar_noise = _ar1(rng, (n_zones, hours), _NOISE_PHI_PER_HOUR**step_hours, np.full(n_zones, noise))
    load = base * daily * weekly * yearly * weather_response * np.exp(ar_noise)

    width = max(3, len(str(n_zones - 1)))
    names = [f"Z{i:0{width}d}" for i in range(n_zones)]
    return pd.DataFrame({
        ZONE: pd.Categorical.from_codes(np.repeat(np.arange(n_zones), hours), names).astype("str"),
        TIMESTAMP: np.tile(stamps, n_zones),
        LOAD: load.ravel(),
        TEMPERATURE: temperature.ravel(),
    })
