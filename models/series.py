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


def shown(value: object, limit: int = 80) -> str:
    """`value` as an error message quotes it: its repr, cut to about `limit` characters with the full length
    after it. Every error message that echoes client input (serving's, the store's ingest reasons) uses this:
    a 100 MB name must not make a 100 MB error."""
    if isinstance(value, (str, bytes)) and len(value) > limit:  # cut before repr: never copy it whole
        return f"{value[:limit]!r}… ({len(value):,} {'chars' if isinstance(value, str) else 'bytes'})"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} chars)"
