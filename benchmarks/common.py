"""Benchmark results in the project's one JSON shape (DESIGN.md, "Benchmark results")."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """CPU model, core count and GPU (None without CUDA) of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu}


def git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write_result(name: str, config: dict[str, Any], rows: list[dict[str, Any]], summary: dict[str, Any],
                 out_dir: Path = RESULTS) -> Path:
    """Write benchmarks/results/<name>.json and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_sha(),
        "machine": machine(),
        "config": config,
        "rows": rows,
        "summary": summary,
    }
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


DEMO_BUNDLE = Path("runs/demo/model")


def demo_forecaster(path: Path = DEMO_BUNDLE, tag: str = "forecaster") -> tuple[Any, float | None]:
    """The forecaster bundle at `path`, trained there with configs/models/demo.yaml (as `energyopt demo`
    does) when none is there yet, so a benchmark runs on a fresh clone. Returns (bundle, seconds spent
    training, None when it was loaded)."""
    import time

    from models.bundle import load_bundle
    from training.config import load_config
    from training.pipeline import train

    try:
        return load_bundle(path), None
    except ValueError:  # BundleError: nothing (usable) there yet
        print(f"[{tag}] no bundle at {path}: training the demo model (configs/models/demo.yaml)", flush=True)
        started = time.perf_counter()
        bundle = train(load_config(Path(__file__).resolve().parents[1] / "configs" / "models" / "demo.yaml"), None,
                       path, progress=False, evaluate=False, log=lambda line: print(f"[{tag}] {line}", flush=True))
        return bundle, round(time.perf_counter() - started, 1)
