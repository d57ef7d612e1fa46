"""The series schema shared by training and serving: long format, one row per (zone, hour)."""

from __future__ import annotations

from pathlib import Path

ZONE = "zone"
TIMESTAMP = "timestamp"
LOAD = "load_mw"
REQUIRED_COLUMNS = (ZONE, TIMESTAMP, LOAD)

# The bundled default data: the five PJM zones as published (duplicates and gaps included), long format.
BUNDLED_PJM = Path(__file__).parent / "assets" / "pjm_hourly.parquet"
DEFAULT_REGION = "PJM"


class SeriesError(ValueError):
    """Input series that cannot be used; the message names the problem and what to fix."""
