"""Regenerate models/assets/pjm_hourly.parquet from the published wide PJM CSVs.

The rows are kept exactly as published, duplicate daylight-saving hours and gaps included: repair
happens on load (models.data.clean) so the demo can show what it repaired. The file is compact:
zone dictionary-encoded, load float32 (the published values are whole megawatts, exact in float32),
zstd-compressed.

    python benchmarks/make_bundled_data.py [FOLDER]   # FOLDER defaults to ../shared/data/pjm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout, installed or not
from models.data import read_table
from models.series import BUNDLED_PJM, LOAD, TIMESTAMP, ZONE

DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pjm"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE,
                        help="folder of <ZONE>_hourly.csv files")
    args = parser.parse_args()
    out = make(args.source)
    size = BUNDLED_PJM.stat().st_size
    print(f"wrote {BUNDLED_PJM}: {len(out)} rows, zones {list(out[ZONE].cat.categories)}, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
