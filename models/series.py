"""The series schema shared by training and serving: long format, one row per (zone, hour)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ZONE = "zone"
TIMESTAMP = "timestamp"
LOAD = "load_mw"
REQUIRED_COLUMNS = (ZONE, TIMESTAMP, LOAD)
TEMPERATURE = "temperature_c"  # an air temperature covariate column, degrees Celsius


@dataclass(frozen=True)
class Variable:
    """A weather variable: its unit and the range a real value lies in (outside it: refused, by the store's
    ingest and by a model's inputs alike)."""

    name: str
    unit: str
    low: float
    high: float

    def implausible(self, values: np.ndarray) -> str | None:
        """Why finite `values` cannot be this variable (None when they can): values outside the range, and
        for degrees Celsius, a series too hot for °C but plausible as °F, which is named as such."""
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        out = (v < self.low) | (v > self.high)
        if not out.any():
            return None
        if self.unit == "°C" and ((v[out] > self.high) & ((v[out] - 32) / 1.8 <= self.high)).all():
            return (f"{self.name} looks like degrees Fahrenheit: {int(out.sum())} of {len(v)} values lie above "
                    f"{self.high:g} °C (up to {v.max():g}); send °C")
        return (f"{int(out.sum())} of {len(v)} values are not a plausible {self.name}: outside {self.low:g}.."
                f"{self.high:g} {self.unit} (e.g. {v[out][0]:g})")


# Weather variables by column name; the name carries the unit. -60..60 degC spans every air temperature
# measured on Earth (-89 and 57 are the records, both far from any grid); 80-110 degF summer values, sent by
# mistake, fall above it
WEATHER_VARIABLES = {TEMPERATURE: Variable(TEMPERATURE, "°C", -60.0, 60.0)}

ASSETS = Path(__file__).parent / "assets"
# The bundled default data: the five PJM zones as published (duplicates and gaps included), long format.
BUNDLED_PJM = ASSETS / "pjm_hourly.parquet"
# Australia's NEM: five states' half-hourly demand and temperature, 2012-2014 (benchmarks/make_bundled_data.py)
BUNDLED_NEM = ASSETS / "nem_halfhourly.parquet"
DEFAULT_REGION = "PJM"


@dataclass(frozen=True)
class BundledRegion:
    """A region whose data ships in the package: its file, the clock of its naive timestamps and the
    public holidays of its zones (the defaults a store and a feature spec take for it)."""

    name: str
    path: Path
    time_zone: str  # IANA zone of the file's naive timestamps; the store registers the zones with it
    holiday_country: str  # models.features holiday calendar code
    holiday_zones: tuple[tuple[str, str], ...] = ()  # (zone, calendar) where a zone's holidays differ
    attribution: str = ""  # to be kept wherever the data or a file derived from it is shipped

    @property
    def zones(self) -> tuple[str, ...]:
        return tuple(z for z, _ in self.holiday_zones)


NEM_ATTRIBUTION = ("Demand: Australian Energy Market Operator; temperature: Australian Bureau of Meteorology; "
                   "compiled in tsibbledata (aus_elec)")
BUNDLED = {
    # PJM publishes Eastern prevailing time (with daylight saving); US federal holidays
    "PJM": BundledRegion("PJM", BUNDLED_PJM, "America/New_York", "US"),
    # AEMO market time is UTC+10 all year in every state (no daylight saving): Brisbane's clock. Each
    # state has its own public holidays (Melbourne Cup day in VIC only, ...).
    "NEM": BundledRegion("NEM", BUNDLED_NEM, "Australia/Brisbane", "AU",
                         tuple((z, f"AU-{z}") for z in ("NSW", "QLD", "SA", "TAS", "VIC")), NEM_ATTRIBUTION),
}


def bundled_region(path: str | Path) -> BundledRegion | None:
    """The bundled region whose file `path` is, or None."""
    resolved = Path(path).resolve()
    return next((r for r in BUNDLED.values() if r.path.resolve() == resolved), None)


# Reading intervals a zone may have, in seconds: hourly, or sub-hourly ones that ingest averages to hours.
RESOLUTIONS = (3600, 1800, 900, 300)


class SeriesError(ValueError):
    """Input series that cannot be used; the message names the problem and what to fix."""


def shown(value: object, limit: int = 80) -> str:
    """`value` as an error message quotes it: its repr, cut to about `limit` characters with the full length
    after it. Every error message that echoes client input (serving's, the store's ingest reasons) uses this:
    a 100 MB name must not make a 100 MB error."""
    if isinstance(value, (str, bytes)) and len(value) > limit:  # cut before repr: never copy it whole
        return f"{value[:limit]!r}… ({len(value):,} {'chars' if isinstance(value, str) else 'bytes'})"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} chars)"
