"""Pictures of forecasts: recent history, the point forecast and its quantile band, one panel per zone."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from models.region import RegionForecast


def plot_region(result: RegionForecast, histories: Mapping[str, pd.Series], path: str | Path,
                history_hours: int = 7 * 24) -> Path:
    """Draw each zone and the region total to a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    paths = [*result.zones, result.total]
    total_history = sum(h.iloc[-history_hours:] for h in histories.values() if h.name in {s.name for s in paths})
    fig, axes = plt.subplots(len(paths), 1, figsize=(11, 2.2 * len(paths)), sharex=True, squeeze=False)
    for ax, s in zip(axes[:, 0], paths):
        past = histories[s.name] if s.name in histories else total_history
        past = past[past.index < result.issue_time].iloc[-history_hours:]
        ax.plot(past.index, past.to_numpy(), color="0.3", lw=1, label="observed")
        ax.fill_between(s.timestamps, s.quantiles[:, 0], s.quantiles[:, -1], color="tab:blue", alpha=0.25,
                        label=f"{result.quantile_levels[0]:g}-{result.quantile_levels[-1]:g} band")
        ax.plot(s.timestamps, s.point, color="tab:blue", lw=1.5, label="forecast")
        ax.set_ylabel(f"{s.name}\nMW")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper left", fontsize=8, ncols=3)
    axes[0, 0].set_title(f"{result.region} load forecast issued {result.issue_time}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
