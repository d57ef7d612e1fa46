"""Distributed training on Ray Train (training/distributed.py): 2 CPU workers with gloo, on the session Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.bundle import load_bundle


def test_ray_train_with_two_workers_writes_a_bundle_like_a_local_run(ray_session, synthetic_csv: Path, tiny_config,
                                                                     tiny_bundle_dir: Path, tmp_path: Path) -> None:
    from training.distributed import train_distributed

    out = tmp_path / "distributed"
    lines: list[str] = []
    train_distributed(tiny_config, synthetic_csv, out, num_workers=2, storage=tmp_path / "ray-train",
                      log=lines.append)
    bundle, local = load_bundle(out), load_bundle(tiny_bundle_dir)
    # the same bundle layout and metadata as `energyopt train` writes ...
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in tiny_bundle_dir.iterdir())
    assert set(bundle.meta) == set(local.meta)
    assert bundle.config == local.config and bundle.meta["zones"] == local.meta["zones"]
    assert bundle.meta["training"]["distributed"] == {"framework": "ray.train.torch.TorchTrainer",
                                                      "num_workers": 2, "use_gpu": False, "backend": "gloo"}
    epochs = bundle.meta["training"]["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1] and all(np.isfinite(e["val_loss"]) for e in epochs)
    assert bundle.meta["training"]["best_val_loss"] == min(e["val_loss"] for e in epochs)
    # ... checkpointed through Ray Train (one checkpoint per epoch, the best two kept) ...
    assert list((tmp_path / "ray-train").rglob("checkpoint.ckpt"))
    # ... and trained: a sane backtest (MASE < 2) and well-formed forecasts
    assert bundle.metrics["summary"][bundle.name]["mase"] < 2.0
    last = pd.DatetimeIndex([pd.Timestamp("2021-01-10 23:00")])
    q = bundle.predict(np.linspace(900, 1100, 336, dtype=np.float32)[None], last, 48)
    assert q.shape == (1, 48, 3) and np.isfinite(q).all() and (np.diff(q, axis=-1) >= 0).all()
    assert any("Ray Train: 2 worker(s) (CPU, gloo)" in line for line in lines)


def test_distributed_training_refuses_bad_settings(ray_session, tiny_config, tmp_path: Path) -> None:
    from training.distributed import train_distributed

    with pytest.raises(ValueError, match="at least 1"):
        train_distributed(tiny_config, None, tmp_path / "x", num_workers=0)
    naive = tiny_config.model_copy(deep=True)
    naive.model.type = "seasonal_naive"
    with pytest.raises(ValueError, match="without --num-workers"):
        train_distributed(naive, None, tmp_path / "x", num_workers=2)
