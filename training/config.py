"""Training configuration: one YAML file per model under configs/models/, validated with pydantic.

Every field has a default, so `energyopt train --model lstm` works without a file; a typo in a file is an
error naming the field rather than a silently ignored setting. A file may name a `base:` config (a model
name, or a path relative to the file) and give only what differs from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.autoencoder import AutoencoderConfig
from models.features import FeatureSpec, holiday_calendar
from models.forecaster import BACKBONES, ForecasterConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
AUTOENCODER = "autoencoder"  # the anomaly detector (models/autoencoder.py); every other type forecasts
_FORECASTER = ForecasterConfig()  # the model section's defaults are the runtime config's


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Strict):
    """ForecasterConfig's settings that a file gives (the covariate counts follow from the features section)."""

    type: str = _FORECASTER.type
    input_length: int = Field(_FORECASTER.input_length, ge=24, le=24 * 60)
    horizon: int = Field(_FORECASTER.horizon, ge=1, le=24 * 31)
    quantiles: list[float] = Field(default_factory=lambda: list(_FORECASTER.quantiles))
    params: dict[str, Any] = Field(default_factory=lambda: dict(_FORECASTER.params))
    kernels: Literal["auto", "on", "off"] = _FORECASTER.kernels  # Triton kernels (models/kernels): auto = on CUDA

    @field_validator("type")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in BACKBONES and v != AUTOENCODER:
            raise ValueError(f"unknown model type {v!r}; choose one of {sorted([*BACKBONES, AUTOENCODER])}")
        return v

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, v: list[float]) -> list[float]:
        if sorted(set(v)) != v or not all(0 < q < 1 for q in v):
            raise ValueError("quantiles must be distinct, increasing and inside (0, 1)")
        return v


class FeatureSection(_Strict):
    calendar: bool = True
    holiday_country: str | None = "US"  # "US", or with a state: "AU-NSW"
    # zone -> its own holiday calendar instead of holiday_country's, e.g. {"NSW": "AU-NSW", "VIC": "AU-VIC"}
    # (models.series.BUNDLED["NEM"].holiday_zones has the NEM's)
    holiday_zones: dict[str, str] = Field(default_factory=dict)
    covariates: list[str] = Field(default_factory=list)
    # region context: these zones' load over the history window, read beside every series' own (lstm and
    # transformer); the data must hold them, and so must every request the model serves
    region_zones: list[str] = Field(default_factory=list, max_length=64)
    # the calendar's position in the year (models.features.FeatureSpec.annual): leave it off on a few years
    # of data, where it lets a model learn each training date's weather by heart
    annual: bool = True

    @field_validator("holiday_country", "holiday_zones")
    @classmethod
    def _known_holidays(cls, v: str | dict[str, str] | None) -> str | dict[str, str] | None:
        for code in (v.values() if isinstance(v, dict) else [v] if v else []):
            holiday_calendar(code)  # ValueError naming the code
        return v

    @field_validator("region_zones")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"zones must be distinct, got {v}")
        return v

    def spec(self) -> FeatureSpec:
        return FeatureSpec(self.calendar, self.holiday_country, tuple(self.covariates), tuple(self.region_zones),
                           tuple(self.holiday_zones.items()), self.annual)


class DataSection(_Strict):
    # "auto": a year, or less where a year would leave under two training years (models.data.auto_validation_days);
    # training.pipeline.prepare_data puts the number in its place, so bundles record the days used
    val_days: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    test_days: int = Field(365, ge=1)
    max_interpolate_hours: int = Field(6, ge=0)


class TrainingSection(_Strict):
    max_epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    samples_per_epoch: int = Field(40_000, ge=1)  # random windows drawn per epoch (all origins are eligible)
    val_samples: int = Field(10_000, ge=1)  # fixed random subset of validation windows
    patience: int = Field(5, ge=1)  # early stopping on validation loss
    gradient_clip: float = Field(1.0, ge=0)
    # the loss's units: "window" (each window normalized by its own level and spread: zones of any size
    # weigh alike) or "data" (the data's units, e.g. MW: what an overall MAE in MW or ETTh1's MSE measures)
    loss_units: Literal["window", "data"] = "window"
    # region-context models: the chance that a training window hides each region zone's channel (as a gap
    # in that zone's data does when serving), so the model copes without any one neighbour
    region_dropout: float = Field(0.0, ge=0, lt=1)
    # blend this share of the training windows with a window of the same zone at the same hour of the week
    # (training.windows.WindowDataset): more distinct days than the data has, for models that learn a short
    # history's days by heart; forecasters only
    mixup: float = Field(0.0, ge=0, le=1)
    # validate and keep an exponential moving average of the weights (this decay per optimizer step; about
    # 1 / (1 - decay) steps of memory) instead of the last step's weights; None trains without one
    ema_decay: float | None = Field(None, gt=0, lt=1)
    seed: int = 42
    precision: Literal["auto", "32", "16-mixed", "bf16-mixed"] = "auto"  # auto: bf16-mixed on GPU, 32 on CPU
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    num_threads: int | None = None  # torch CPU threads; None: torch's default


class DetectionSection(_Strict):
    """Anomaly threshold calibration on validation data (autoencoder only; see models/anomaly.py)."""

    method: Literal["pot", "quantile"] = "pot"  # generalized Pareto tail fit, or the plain quantile
    risk: float = Field(1e-4, gt=0, lt=0.02)  # hourly exceedance probability per score component
    merge_gap_hours: int = Field(6, ge=0)  # flagged hours this close are one event
    max_false_alarms_per_month: float | None = Field(0.5, gt=0)  # per zone, on validation data


class TrainConfig(_Strict):
    name: str = "forecaster"
    model: ModelSection = Field(default_factory=ModelSection)
    features: FeatureSection = Field(default_factory=FeatureSection)
    data: DataSection = Field(default_factory=DataSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    detection: DetectionSection = Field(default_factory=DetectionSection)

    @model_validator(mode="after")
    def _region_reader(self) -> TrainConfig:
        backbone = BACKBONES.get(self.model.type)  # None for the autoencoder
        if self.features.region_zones and not (backbone and backbone.reads_past_covariates):
            raise ValueError(f"features.region_zones: model type {self.model.type!r} reads no region context; "
                             "use lstm or transformer, or leave region_zones empty")
        if self.training.mixup and backbone is None:
            raise ValueError(f"training.mixup blends forecast windows; model type {self.model.type!r} draws none")
        return self

    def autoencoder_config(self) -> AutoencoderConfig:
        return AutoencoderConfig(input_length=self.model.input_length, n_covariates=self.features.spec().size,
                                 params=dict(self.model.params))

    def forecaster_config(self) -> ForecasterConfig:
        m = self.model
        return ForecasterConfig(type=m.type, input_length=m.input_length, horizon=m.horizon,
                                quantiles=tuple(m.quantiles), n_covariates=self.features.spec().known_size,
                                n_past_covariates=len(self.features.region_zones), params=dict(m.params),
                                kernels=m.kernels)


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the field."""


def model_config_path(ref: str | Path, folder: Path | None = None) -> Path:
    """The config file `ref` names: a model name (configs/models/<name>.yaml) or a path, relative to `folder`."""
    path = Path(ref)
    if not path.suffix:
        return CONFIG_DIR / "models" / f"{ref}.yaml"
    return folder / path if folder else path


def load_config(path: str | Path | None = None, *, model: str | None = None, **overrides: Any) -> TrainConfig:
    """Read a YAML config (default: configs/models/<model>.yaml) and apply dotted overrides such as
    `training.max_epochs=3`."""
    if path is None:
        path = model_config_path(model or "lstm")
        if not path.is_file():
            raise ConfigError(f"no default config for model {model!r} at {path}; pass --config FILE")
    path = Path(path)
    raw = _read(path)
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return validated(TrainConfig, raw, f"config {path}")


Section = TypeVar("Section", bound=BaseModel)


def validated(schema: type[Section], raw: dict[str, Any], what: str) -> Section:
    """`raw` as `schema`, or a ConfigError naming `what` and every field that is wrong."""
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid {what}: {problems}") from None


def read_yaml(path: Path, what: str = "config file") -> dict[str, Any]:
    """The mapping a YAML file holds, or a ConfigError saying what is wrong with the file."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level")
    return raw


def _read(path: Path, children: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's settings over those of its `base:` (and so on): mappings merge key by key, a value replaces;
    a file that changes the model type keeps only its own model params."""
    raw = read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    base_path = model_config_path(base, path.parent)
    if base_path.resolve() in (path.resolve(), *children):
        raise ConfigError(f"config file {path}: base {base!r} leads back to itself")
    inherited = _read(base_path, (*children, path.resolve()))
    merged = _merge(inherited, raw)
    model, base_model = raw.get("model") or {}, inherited.get("model") or {}
    if "type" in model and model["type"] != base_model.get("type"):  # params belong to a model type
        merged["model"]["params"] = dict(model.get("params") or {})
    return merged


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both else value
    return merged
