"""The model bundle: a directory that holds everything needed to forecast, and nothing executable.

    config.json       architecture, horizon, quantiles, feature spec, zones and scaling statistics,
                      data fingerprint, training summary, library versions
    model.safetensors weights and buffers (tensors only: loading never unpickles anything)
    metrics.json      evaluation results (optional)
    checksums.json    {"algorithm": "sha256", "files": {name: hex digest}} of each file above

A bundle trained on a GPU loads on a CPU and vice versa: tensors are stored on the CPU in float32.

Integrity: `load_bundle` hashes every file that checksums.json lists before reading it, so a bundle
changed after it was written (a flipped byte, a truncated copy, a missing file) is one BundleError naming
the file, never a model that loads and forecasts garbage. Every writer of bundle files re-hashes:
`save_bundle`, `write_metrics` (metrics.json is rewritten after training by evaluation) and
`write_checksums` for anything else that edits a finished bundle (e.g. retraining noting its data source).
A bundle without checksums.json (written before they existed) is refused, with the command that adds them
for a bundle one trusts: `python -m models.bundle checksum DIR`. Refusing costs one command per old bundle;
loading it unverified would make every corruption check skippable by deleting one file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import nn

import models  # noqa: F401  (registers every backbone)
from models.autoencoder import AutoencoderConfig, ConvAutoencoder
from models.features import FeatureSpec
from models.forecaster import ForecasterConfig, QuantileForecaster
from models.inputs import InputError, ModelInputs

BUNDLE_FORMAT = 1
CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE = "config.json", "model.safetensors", "metrics.json"
CHECKSUMS_FILE = "checksums.json"


class BundleError(ValueError):
    """A bundle directory that is missing, incomplete, corrupt or from an unknown format."""


@dataclass
class Bundle:
    """What every loaded bundle holds: its model, feature spec, name, version, metadata and metrics.
    load_bundle returns the subclass its config.json "kind" names."""

    kind: ClassVar[str]  # config.json "kind" (absent in a file: a forecaster)
    module: ClassVar[type[nn.Module]]  # rebuilt from config.json "model" through `config_type`
    config_type: ClassVar[type[ForecasterConfig] | type[AutoencoderConfig]]

    model: nn.Module
    features: FeatureSpec
    name: str
    version: str
    meta: dict[str, Any] = field(default_factory=dict)  # zones, scaling, data, training, versions
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class DetectorBundle(Bundle):
    """An anomaly detector: the autoencoder, its calibration in meta["detector"] (models.autoencoder)."""

    kind, module, config_type = "autoencoder", ConvAutoencoder, AutoencoderConfig
    model: ConvAutoencoder


@dataclass
class ForecasterBundle(Bundle):
    """A forecaster with its metadata; `predict` turns histories into quantile forecasts."""

    kind, module, config_type = "forecaster", QuantileForecaster, ForecasterConfig
    model: QuantileForecaster

    @property
    def config(self) -> ForecasterConfig:
        return self.model.config

    @property
    def quantiles(self) -> tuple[float, ...]:
        return self.config.quantiles

    @property
    def input_length(self) -> int:
        return self.config.input_length

    @property
    def max_horizon(self) -> int:
        return self.config.horizon

    @property
    def inputs(self) -> ModelInputs:
        """How this model's inputs are checked and assembled (models.inputs)."""
        return ModelInputs(self.features, self.input_length, self.max_horizon, self.name)

    @property
    def region_zones(self) -> tuple[str, ...]:
        """Zones whose recent load the model reads beside each series (empty: its own history only)."""
        return self.features.region_zones

    @torch.no_grad()
    def predict(
        self,
        history: np.ndarray,
        last_timestamps: Sequence[pd.Timestamp] | pd.DatetimeIndex,
        horizon: int,
        *,
        extra: tuple[np.ndarray, np.ndarray] | None = None,
        region: np.ndarray | None = None,
        zones: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 4096,
    ) -> np.ndarray:
        """Quantile forecasts [B, horizon, Q] (sorted along Q) for B histories [B, >= input_length].

        `last_timestamps[b]` is the hour of the last value of history b; the forecast covers the
        `horizon` hours after it. Only the last `input_length` hours of each history are read.
        A model trained with extra covariates needs their values, `extra` = (past [B, input_length, K],
        future [B, max_horizon, K]) in the spec's order: the hours of the window and all the hours the
        model forecasts. A model trained with region context needs `region` [B, >= input_length, R]: the
        load in MW of its `region_zones`, in that order, over the same hours as each history (NaN where a
        zone has no value; see models.region.RegionPanel), and `zones`, each series' zone name (a zone
        outside `region_zones` is forecast as a zone the model has not met).
        """
        if not 1 <= horizon <= self.max_horizon:
            raise InputError("horizon", f"horizon must be between 1 and {self.max_horizon} hours, got {horizon}")
        history, past, future = self.inputs.build(history, last_timestamps, extra=extra, region=region, zones=zones)
        model = self.model.to(device)
        out = []
        for i in range(0, len(history), batch_size):
            sl = slice(i, i + batch_size)
            q = model(*(torch.from_numpy(a[sl]).to(device) for a in (history, past, future)))
            out.append(q[:, :horizon].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, horizon, self.model.config.n_outputs), np.float32)


KINDS: dict[str, type[Bundle]] = {cls.kind: cls for cls in (ForecasterBundle, DetectorBundle)}


def save_bundle(
    path: str | Path,
    model: QuantileForecaster | ConvAutoencoder,
    features: FeatureSpec,
    *,
    name: str,
    version: str,
    meta: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle atomically: a half-written directory never looks like a finished bundle."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "format": BUNDLE_FORMAT,
        "kind": next(kind for kind, cls in KINDS.items() if isinstance(model, cls.module)),
        "name": name,
        "version": version,
        "model": model.config.to_dict(),
        "features": features.to_dict(),
        **(meta or {}),
        "versions": _library_versions(),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))
        if metrics is not None:
            (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str))
        write_checksums(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    """Replace a bundle's metrics.json (e.g. after a new evaluation) and its checksum."""
    target = Path(path) / METRICS_FILE
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, default=str))
    os.replace(tmp, target)
    write_checksums(path)


def write_checksums(path: str | Path) -> Path:
    """(Re)write checksums.json for the bundle files present in `path`: call it after any change to a
    finished bundle, and only on files one trusts (it makes whatever is there the reference)."""
    path = Path(path)
    files = {name: _sha256((path / name).read_bytes()) for name in (CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE)
             if (path / name).is_file()}
    target = path / CHECKSUMS_FILE
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=2))
    os.replace(tmp, target)
    return target


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _verified_files(path: Path) -> dict[str, bytes]:
    """The bundle's files as bytes, each checked against checksums.json (read once: what is hashed is what
    is loaded). Raises BundleError naming the first file that is missing or does not match."""
    checksums_path = path / CHECKSUMS_FILE
    if not checksums_path.is_file():
        raise BundleError(f"bundle {path} has no {CHECKSUMS_FILE}, so its files cannot be checked (it was "
                          f"written before bundles carried checksums); if you trust it, add them with "
                          f"`python -m models.bundle checksum {path}`, or retrain")
    try:
        listed = json.loads(checksums_path.read_text())["files"]
        if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
            raise TypeError("files must map names to hex digests")
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise BundleError(f"corrupt {CHECKSUMS_FILE} in bundle {path}: {err}; retrain or copy the bundle "
                          "again") from None
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if required not in listed:
            raise BundleError(f"bundle {path}: {CHECKSUMS_FILE} lists no checksum for {required}; retrain or "
                              "copy the bundle again")
    if unlisted := [n for n in (METRICS_FILE,) if (path / n).is_file() and n not in listed]:
        raise BundleError(f"bundle {path} holds {unlisted[0]}, which its {CHECKSUMS_FILE} does not list (it was "
                          "added after the bundle was written); write it with models.bundle.write_metrics, or "
                          "retrain")
    contents = {}
    for name, digest in listed.items():
        if name not in (CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE):
            raise BundleError(f"bundle {path}: {CHECKSUMS_FILE} lists an unknown file {name!r}")
        if not (path / name).is_file():
            raise BundleError(f"incomplete model bundle {path}: {name} is missing; retrain or copy the "
                              "bundle again")
        data = (path / name).read_bytes()
        if _sha256(data) != digest:
            raise BundleError(f"the bundle's {name} does not match its checksum ({path / name}): the file is "
                              "corrupt or was changed after training; retrain or copy it again")
        contents[name] = data
    return contents


def load_bundle(path: str | Path) -> Bundle:
    """Load a bundle on the CPU, in eval mode. Raises BundleError saying what is wrong with the directory."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"no model bundle at {path}: expected a directory with {CONFIG_FILE} and {WEIGHTS_FILE}")
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / required).is_file():
            raise BundleError(f"incomplete model bundle {path}: {required} is missing")
    files = _verified_files(path)
    try:
        config = json.loads(files[CONFIG_FILE])
        if config.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"bundle {path} has format {config.get('format')!r}; this version reads {BUNDLE_FORMAT}")
        kind = config.get("kind", ForecasterBundle.kind)
        if kind not in KINDS:
            raise BundleError(f"bundle {path} holds a {kind!r} model; this version reads {sorted(KINDS)}")
        cls = KINDS[kind]
        model = cls.module(cls.config_type.from_dict(config["model"]))
        features = FeatureSpec.from_dict(config["features"])
    except BundleError:
        raise
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise BundleError(f"corrupt {CONFIG_FILE} in bundle {path}: {err}") from None
    try:
        state = load_safetensors(files[WEIGHTS_FILE])
    except (SafetensorError, OSError, ValueError) as err:
        raise BundleError(f"corrupt weights in bundle {path} ({WEIGHTS_FILE}): {err}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or differently shaped tensors
        detail = str(err).split("\n\t")[1:3]
        raise BundleError(f"weights in bundle {path} do not match its config.json: {'; '.join(detail)}") from None
    model.eval()
    metrics = {}
    if METRICS_FILE in files:
        try:
            metrics = json.loads(files[METRICS_FILE])
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BundleError(f"corrupt {METRICS_FILE} in bundle {path}: {err}") from None
    meta = {k: v for k, v in config.items() if k not in ("format", "kind", "name", "version", "model", "features")}
    return cls(model=model, features=features, name=config["name"], version=str(config["version"]),
               meta=meta, metrics=metrics)


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("energyopt", "torch", "pytorch-lightning", "numpy", "pandas"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":  # python -m models.bundle checksum DIR: add checksums to a trusted older bundle
    if len(sys.argv) != 3 or sys.argv[1] != "checksum" or not Path(sys.argv[2], CONFIG_FILE).is_file():
        sys.exit("usage: python -m models.bundle checksum BUNDLE_DIR (a directory with config.json and "
                 "model.safetensors whose files you trust)")
    print(f"wrote {write_checksums(sys.argv[2])}")
