"""Batch anomaly detection on Ray Data: Parquet load in, Parquet events out.

    read_parquet(zone, timestamp, load_mw)       local path or any pyarrow filesystem URI
      -> groupby(zone).map_groups(_detect_zone)   one task per zone: its series repaired for detection
                                                  (duplicates merged, short gaps filled, zeros kept),
                                                  scored by the autoencoder, hours merged into events
      -> write_parquet(output)                    zone, start, end, hours, severity, expected, observed,
                                                  component

The bundle is loaded and checked by the driver and shipped to the tasks through the object store, so
workers need no shared filesystem. The events equal those of `energyopt detect` on the same data.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.anomaly import detection_segments
from models.autoencoder import detect_segments, detector_of
from models.bundle import Bundle, load_bundle
from models.runtime import ensure_ray
from models.series import LOAD, TIMESTAMP, ZONE, SeriesError

EVENT_COLUMNS = {"zone": "str", "start": "datetime64[us]", "end": "datetime64[us]", "hours": "int64",
                 "severity": "float64", "expected": "float64", "observed": "float64", "component": "str"}


def _detect_zone(rows: pd.DataFrame, bundle: Bundle, max_interpolate_hours: int) -> pd.DataFrame:
    """All rows of one zone -> its events (an empty frame when none; short series yield none)."""
    import torch

    torch.set_num_threads(1)  # one task per CPU: more threads per task only fight over the cores
    segments, _ = detection_segments(rows, max_interpolate_hours=max_interpolate_hours)
    results, _ = detect_segments(bundle, segments)
    events = [{c: getattr(e, c) for c in EVENT_COLUMNS} for r in results for e in r.events]  # `hours`: a property
    return pd.DataFrame(events, columns=list(EVENT_COLUMNS)).astype(EVENT_COLUMNS)


def detect_parquet(model: str | Path | Bundle, input_path: str | Path, output: str | Path, *,
                   max_interpolate_hours: int = 6, num_partitions: int | None = None) -> int:
    """Detect anomalies in every zone of a long-format Parquet data set (a file or a folder) and write
    the events as Parquet files under `output`. Returns the number of events written."""
    import ray

    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    detector_of(bundle)  # fail here, not in every task, when it is not an anomaly bundle
    ensure_ray(include_dashboard=False)
    try:
        ds = ray.data.read_parquet(str(input_path), columns=[ZONE, TIMESTAMP, LOAD])
    except Exception as err:  # noqa: BLE001 - Ray wraps pyarrow's errors; say which file and why
        raise SeriesError(f"{input_path}: cannot read as Parquet with columns {[ZONE, TIMESTAMP, LOAD]} "
                          f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
    # every zone's rows in one group; a few partitions (one per CPU by default) keep the shuffle small
    partitions = num_partitions or max(1, int(ray.cluster_resources().get("CPU", 1)))
    events = ds.groupby(ZONE, num_partitions=partitions).map_groups(
        _detect_zone, batch_format="pandas",
        fn_kwargs={"bundle": bundle, "max_interpolate_hours": max_interpolate_hours}).materialize()
    events.write_parquet(str(output))  # materialized: computed once, then written and counted
    return int(events.count())


def read_events(path: str | Path) -> pd.DataFrame:
    """Events written by `detect_parquet`, sorted by start and zone."""
    return pd.read_parquet(path).sort_values(["start", "zone"], kind="stable").reset_index(drop=True)
