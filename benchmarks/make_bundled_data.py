"""Regenerate the bundled data: models/assets/pjm_hourly.parquet from the published wide PJM CSVs, or
(--nem) models/assets/nem_halfhourly.parquet from the NEM's half-hourly CSV (tsibbledata's aus_elec).

The rows are kept exactly as published, duplicate daylight-saving hours and gaps included: repair
happens on load (models.data.clean) so the demo can show what it repaired. The files are compact:
zone dictionary-encoded, zstd-compressed; PJM's load float32 (the published values are whole megawatts,
exact in float32). The NEM's demand (kW precision) and temperature (0.05 degC steps) are not exact in
float32 and stay float64; its timestamps are delta-encoded.

The NEM file keeps the half-hours (resampled to hourly means on load, as any sub-hourly feed is, and
seeded into the store as the 30-min readings they are) with one change: the CSV stamps the END of each
half-hour, the project labels an interval by its START (models/data.py), so every stamp moves back
30 min: the period ending 2012-01-01 00:00 is the half-hour 2011-12-31 23:30, in the hour 23:00 of
2011-12-31. Times stay naive AEMO market time (UTC+10 all year: models.series.BUNDLED["NEM"]).

    python benchmarks/make_bundled_data.py [FOLDER]        # FOLDER defaults to ../shared/data/pjm
    python benchmarks/make_bundled_data.py --nem [CSV]     # CSV defaults to ../shared/data/aus_elec/...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout, installed or not
from models.data import read_table
from models.series import BUNDLED, BUNDLED_NEM, BUNDLED_PJM, LOAD, TEMPERATURE, TIMESTAMP, ZONE

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_SOURCE = SHARED / "pjm"
DEFAULT_NEM_SOURCE = SHARED / "aus_elec" / "aus_elec_halfhourly.csv"
# the CSV's state names -> the NEM zone names (the states' codes, which are also their `holidays` subdivisions)
NEM_STATES = {"New_South_Wales": "NSW", "Queensland": "QLD", "South_Australia": "SA", "Tasmania": "TAS",
              "Victoria": "VIC"}
NEM_PERIOD = pd.Timedelta(minutes=30)


def _csv_rows(folder: Path) -> int:
    return sum(sum(1 for _ in p.open()) - 1 for p in sorted(folder.glob("*.csv")))


def make(source: Path = DEFAULT_SOURCE, target: Path = BUNDLED_PJM) -> pd.DataFrame:
    """Write the bundled long table and return it; fails if any row was lost or changed on the way."""
    table = read_table(source).sort_values([ZONE, TIMESTAMP], kind="mergesort", ignore_index=True)
    expected = _csv_rows(source)
    if len(table) != expected:
        raise SystemExit(f"read {len(table)} rows but the CSVs in {source} have {expected}")
    out = pd.DataFrame({
        ZONE: table[ZONE].astype("category"),
        TIMESTAMP: table[TIMESTAMP],
        LOAD: table[LOAD].astype("float32"),
    })
    if not (out[LOAD].astype("float64") == table[LOAD]).all():
        raise SystemExit("some load values are not exact in float32; store float64 instead")
    target.parent.mkdir(parents=True, exist_ok=True)
    out.to_parquet(target, engine="pyarrow", compression="zstd", compression_level=19, index=False)
    return out


def nem_table(source: Path = DEFAULT_NEM_SOURCE) -> pd.DataFrame:
    """The NEM CSV as the long table the package ships: zone, timestamp (start of the half-hour, naive
    market time), load_mw, temperature_c, sorted by zone and time; fails if a row or value was lost."""
    raw = pd.read_csv(source)
    expected = {"Time", *(f"{kind}_{state}" for state in NEM_STATES for kind in ("Demand", "Temperature"))}
    if set(raw.columns) != expected:
        raise SystemExit(f"{source}: expected columns {sorted(expected)}, found {sorted(raw.columns)}")
    end = pd.to_datetime(raw["Time"], format="%Y-%m-%d %H:%M:%S")  # the end of each half-hour
    if end.dt.tz is not None or (end.diff().iloc[1:] != NEM_PERIOD).any():
        raise SystemExit(f"{source}: expected naive, strictly half-hourly times without gaps")
    start = (end - NEM_PERIOD).dt.as_unit("us")
    parts = [pd.DataFrame({ZONE: zone, TIMESTAMP: start, LOAD: raw[f"Demand_{state}"].astype("float64"),
                           TEMPERATURE: raw[f"Temperature_{state}"].astype("float64")})
             for state, zone in NEM_STATES.items()]
    out = pd.concat(parts, ignore_index=True).sort_values([ZONE, TIMESTAMP], kind="mergesort", ignore_index=True)
    out[ZONE] = out[ZONE].astype("category")
    if len(out) != len(raw) * len(NEM_STATES) or out[[LOAD, TEMPERATURE]].isna().any().any():
        raise SystemExit(f"{source}: {len(raw)} rows x {len(NEM_STATES)} states gave {len(out)} rows "
                         f"({int(out[[LOAD, TEMPERATURE]].isna().sum().sum())} values missing)")
    return out


def make_nem(source: Path = DEFAULT_NEM_SOURCE, target: Path = BUNDLED_NEM) -> pd.DataFrame:
    """Write the bundled NEM table (attribution in the file's metadata too) and return it; fails if what
    reads back differs from the CSV in any row or value."""
    out = nem_table(source)
    table = pa.Table.from_pandas(out, preserve_index=False)
    table = table.replace_schema_metadata({**table.schema.metadata, b"attribution": BUNDLED["NEM"].attribution.encode(),
                                           b"time_convention": b"start of each half-hour, naive UTC+10 market time"})
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target, compression="zstd", compression_level=19, use_dictionary=[ZONE],
                   column_encoding={TIMESTAMP: "DELTA_BINARY_PACKED"})
    back = pd.read_parquet(target)
    if not back.equals(out):
        raise SystemExit(f"{target}: what reads back differs from {source}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=None,
                        help="folder of <ZONE>_hourly.csv files (with --nem: the aus_elec half-hourly CSV)")
    parser.add_argument("--nem", action="store_true", help="write the NEM file instead of PJM's")
    args = parser.parse_args()
    if args.nem:
        out, target = make_nem(args.source or DEFAULT_NEM_SOURCE), BUNDLED_NEM
    else:
        out, target = make(args.source or DEFAULT_SOURCE), BUNDLED_PJM
    size = target.stat().st_size
    print(f"wrote {target}: {len(out)} rows, zones {list(out[ZONE].cat.categories)}, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
