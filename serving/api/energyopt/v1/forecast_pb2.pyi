from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ForecastRegionRequest(_message.Message):
    __slots__ = ("region", "horizon", "quantiles", "zones", "issue_time", "model", "archive", "weather")
    REGION_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    ISSUE_TIME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    WEATHER_FIELD_NUMBER: _ClassVar[int]
    region: str
    horizon: int
    quantiles: _containers.RepeatedScalarFieldContainer[float]
    zones: _containers.RepeatedScalarFieldContainer[str]
    issue_time: str
    model: str
    archive: bool
    weather: _containers.RepeatedCompositeFieldContainer[ZoneWeather]
    def __init__(self, region: _Optional[str] = ..., horizon: _Optional[int] = ..., quantiles: _Optional[_Iterable[float]] = ..., zones: _Optional[_Iterable[str]] = ..., issue_time: _Optional[str] = ..., model: _Optional[str] = ..., archive: _Optional[bool] = ..., weather: _Optional[_Iterable[_Union[ZoneWeather, _Mapping]]] = ...) -> None: ...

class ZoneWeather(_message.Message):
    __slots__ = ("zone", "variable", "past", "future")
    ZONE_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    PAST_FIELD_NUMBER: _ClassVar[int]
    FUTURE_FIELD_NUMBER: _ClassVar[int]
    zone: str
    variable: str
    past: _containers.RepeatedScalarFieldContainer[float]
    future: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, zone: _Optional[str] = ..., variable: _Optional[str] = ..., past: _Optional[_Iterable[float]] = ..., future: _Optional[_Iterable[float]] = ...) -> None: ...

class WeatherUsed(_message.Message):
    __slots__ = ("zone", "variable", "source", "station", "forecast_issued", "past_hours_from_forecast")
    ZONE_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATION_FIELD_NUMBER: _ClassVar[int]
    FORECAST_ISSUED_FIELD_NUMBER: _ClassVar[int]
    PAST_HOURS_FROM_FORECAST_FIELD_NUMBER: _ClassVar[int]
    zone: str
    variable: str
    source: str
    station: str
    forecast_issued: str
    past_hours_from_forecast: int
    def __init__(self, zone: _Optional[str] = ..., variable: _Optional[str] = ..., source: _Optional[str] = ..., station: _Optional[str] = ..., forecast_issued: _Optional[str] = ..., past_hours_from_forecast: _Optional[int] = ...) -> None: ...

class ForecastRegionResponse(_message.Message):
    __slots__ = ("region", "issue_time", "zones", "total", "model", "fallback_zones", "watermark", "forecast_id", "weather")
    REGION_FIELD_NUMBER: _ClassVar[int]
    ISSUE_TIME_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_ZONES_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    FORECAST_ID_FIELD_NUMBER: _ClassVar[int]
    WEATHER_FIELD_NUMBER: _ClassVar[int]
    region: str
    issue_time: str
    zones: _containers.RepeatedCompositeFieldContainer[Forecast]
    total: Forecast
    model: ModelRef
    fallback_zones: int
    watermark: int
    forecast_id: str
    weather: _containers.RepeatedCompositeFieldContainer[WeatherUsed]
    def __init__(self, region: _Optional[str] = ..., issue_time: _Optional[str] = ..., zones: _Optional[_Iterable[_Union[Forecast, _Mapping]]] = ..., total: _Optional[_Union[Forecast, _Mapping]] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., fallback_zones: _Optional[int] = ..., watermark: _Optional[int] = ..., forecast_id: _Optional[str] = ..., weather: _Optional[_Iterable[_Union[WeatherUsed, _Mapping]]] = ...) -> None: ...

class ForecastSeriesRequest(_message.Message):
    __slots__ = ("series", "horizon", "quantiles", "model")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    series: _containers.RepeatedCompositeFieldContainer[SeriesInput]
    horizon: int
    quantiles: _containers.RepeatedScalarFieldContainer[float]
    model: str
    def __init__(self, series: _Optional[_Iterable[_Union[SeriesInput, _Mapping]]] = ..., horizon: _Optional[int] = ..., quantiles: _Optional[_Iterable[float]] = ..., model: _Optional[str] = ...) -> None: ...

class SeriesInput(_message.Message):
    __slots__ = ("name", "history", "last_timestamp", "covariates")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    LAST_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    COVARIATES_FIELD_NUMBER: _ClassVar[int]
    name: str
    history: _containers.RepeatedScalarFieldContainer[float]
    last_timestamp: str
    covariates: _containers.RepeatedCompositeFieldContainer[Covariate]
    def __init__(self, name: _Optional[str] = ..., history: _Optional[_Iterable[float]] = ..., last_timestamp: _Optional[str] = ..., covariates: _Optional[_Iterable[_Union[Covariate, _Mapping]]] = ...) -> None: ...

class Covariate(_message.Message):
    __slots__ = ("name", "past", "future")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAST_FIELD_NUMBER: _ClassVar[int]
    FUTURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    past: _containers.RepeatedScalarFieldContainer[float]
    future: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., past: _Optional[_Iterable[float]] = ..., future: _Optional[_Iterable[float]] = ...) -> None: ...

class ForecastSeriesResponse(_message.Message):
    __slots__ = ("forecasts", "model")
    FORECASTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    forecasts: _containers.RepeatedCompositeFieldContainer[Forecast]
    model: ModelRef
    def __init__(self, forecasts: _Optional[_Iterable[_Union[Forecast, _Mapping]]] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class Forecast(_message.Message):
    __slots__ = ("name", "timestamps", "point", "quantiles", "last_reading", "fallback")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    LAST_READING_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    name: str
    timestamps: _containers.RepeatedScalarFieldContainer[str]
    point: _containers.RepeatedScalarFieldContainer[float]
    quantiles: _containers.RepeatedCompositeFieldContainer[QuantileBand]
    last_reading: str
    fallback: str
    def __init__(self, name: _Optional[str] = ..., timestamps: _Optional[_Iterable[str]] = ..., point: _Optional[_Iterable[float]] = ..., quantiles: _Optional[_Iterable[_Union[QuantileBand, _Mapping]]] = ..., last_reading: _Optional[str] = ..., fallback: _Optional[str] = ...) -> None: ...

class QuantileBand(_message.Message):
    __slots__ = ("level", "values")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    level: float
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, level: _Optional[float] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "type", "data_fingerprint", "input_length", "max_horizon", "quantiles", "covariates", "metrics", "regions", "stats", "bundle_path", "swap_error", "region_zones")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    INPUT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_HORIZON_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    COVARIATES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_PATH_FIELD_NUMBER: _ClassVar[int]
    SWAP_ERROR_FIELD_NUMBER: _ClassVar[int]
    REGION_ZONES_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    type: str
    data_fingerprint: str
    input_length: int
    max_horizon: int
    quantiles: _containers.RepeatedScalarFieldContainer[float]
    covariates: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.ScalarMap[str, float]
    regions: _containers.RepeatedCompositeFieldContainer[RegionInfo]
    stats: ServingStats
    bundle_path: str
    swap_error: str
    region_zones: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., type: _Optional[str] = ..., data_fingerprint: _Optional[str] = ..., input_length: _Optional[int] = ..., max_horizon: _Optional[int] = ..., quantiles: _Optional[_Iterable[float]] = ..., covariates: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., regions: _Optional[_Iterable[_Union[RegionInfo, _Mapping]]] = ..., stats: _Optional[_Union[ServingStats, _Mapping]] = ..., bundle_path: _Optional[str] = ..., swap_error: _Optional[str] = ..., region_zones: _Optional[_Iterable[str]] = ...) -> None: ...

class RegionInfo(_message.Message):
    __slots__ = ("name", "zones", "history_end")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_END_FIELD_NUMBER: _ClassVar[int]
    name: str
    zones: _containers.RepeatedScalarFieldContainer[str]
    history_end: str
    def __init__(self, name: _Optional[str] = ..., zones: _Optional[_Iterable[str]] = ..., history_end: _Optional[str] = ...) -> None: ...

class ServingStats(_message.Message):
    __slots__ = ("replica", "loaded_at", "requests", "batches", "series", "computed_series", "max_batch_requests", "max_batch_series", "batch_wait_timeout_s", "batch_histogram")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_SERIES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SERIES_FIELD_NUMBER: _ClassVar[int]
    BATCH_WAIT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    BATCH_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    replica: str
    loaded_at: str
    requests: int
    batches: int
    series: int
    computed_series: int
    max_batch_requests: int
    max_batch_series: int
    batch_wait_timeout_s: float
    batch_histogram: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, replica: _Optional[str] = ..., loaded_at: _Optional[str] = ..., requests: _Optional[int] = ..., batches: _Optional[int] = ..., series: _Optional[int] = ..., computed_series: _Optional[int] = ..., max_batch_requests: _Optional[int] = ..., max_batch_series: _Optional[int] = ..., batch_wait_timeout_s: _Optional[float] = ..., batch_histogram: _Optional[_Iterable[int]] = ...) -> None: ...

class ListForecastsRequest(_message.Message):
    __slots__ = ("region", "zone", "issued_from", "issued_to", "scheduled_only", "limit", "headers_only")
    REGION_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_FROM_FIELD_NUMBER: _ClassVar[int]
    ISSUED_TO_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_ONLY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    HEADERS_ONLY_FIELD_NUMBER: _ClassVar[int]
    region: str
    zone: str
    issued_from: str
    issued_to: str
    scheduled_only: bool
    limit: int
    headers_only: bool
    def __init__(self, region: _Optional[str] = ..., zone: _Optional[str] = ..., issued_from: _Optional[str] = ..., issued_to: _Optional[str] = ..., scheduled_only: _Optional[bool] = ..., limit: _Optional[int] = ..., headers_only: _Optional[bool] = ...) -> None: ...

class ArchivedForecast(_message.Message):
    __slots__ = ("id", "region", "issue_time", "issued_at", "slot", "scheduled", "late", "model", "horizon", "watermark", "fallback_zones", "zones", "total")
    ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ISSUE_TIME_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_ZONES_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    id: str
    region: str
    issue_time: str
    issued_at: str
    slot: str
    scheduled: bool
    late: bool
    model: ModelRef
    horizon: int
    watermark: int
    fallback_zones: int
    zones: _containers.RepeatedCompositeFieldContainer[Forecast]
    total: Forecast
    def __init__(self, id: _Optional[str] = ..., region: _Optional[str] = ..., issue_time: _Optional[str] = ..., issued_at: _Optional[str] = ..., slot: _Optional[str] = ..., scheduled: _Optional[bool] = ..., late: _Optional[bool] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., horizon: _Optional[int] = ..., watermark: _Optional[int] = ..., fallback_zones: _Optional[int] = ..., zones: _Optional[_Iterable[_Union[Forecast, _Mapping]]] = ..., total: _Optional[_Union[Forecast, _Mapping]] = ...) -> None: ...

class ListForecastsResponse(_message.Message):
    __slots__ = ("forecasts",)
    FORECASTS_FIELD_NUMBER: _ClassVar[int]
    forecasts: _containers.RepeatedCompositeFieldContainer[ArchivedForecast]
    def __init__(self, forecasts: _Optional[_Iterable[_Union[ArchivedForecast, _Mapping]]] = ...) -> None: ...

class GetForecastAccuracyRequest(_message.Message):
    __slots__ = ("region", "zone", "window_days", "bucket_ends", "until", "include_on_demand", "model_version")
    REGION_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_DAYS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_ENDS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ON_DEMAND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    region: str
    zone: str
    window_days: int
    bucket_ends: _containers.RepeatedScalarFieldContainer[int]
    until: str
    include_on_demand: bool
    model_version: str
    def __init__(self, region: _Optional[str] = ..., zone: _Optional[str] = ..., window_days: _Optional[int] = ..., bucket_ends: _Optional[_Iterable[int]] = ..., until: _Optional[str] = ..., include_on_demand: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class AccuracyRow(_message.Message):
    __slots__ = ("zone", "first_step", "last_step", "forecasts", "points", "mae", "mape", "pinball", "bias", "coverage_80")
    ZONE_FIELD_NUMBER: _ClassVar[int]
    FIRST_STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    FORECASTS_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    MAE_FIELD_NUMBER: _ClassVar[int]
    MAPE_FIELD_NUMBER: _ClassVar[int]
    PINBALL_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_80_FIELD_NUMBER: _ClassVar[int]
    zone: str
    first_step: int
    last_step: int
    forecasts: int
    points: int
    mae: float
    mape: float
    pinball: float
    bias: float
    coverage_80: float
    def __init__(self, zone: _Optional[str] = ..., first_step: _Optional[int] = ..., last_step: _Optional[int] = ..., forecasts: _Optional[int] = ..., points: _Optional[int] = ..., mae: _Optional[float] = ..., mape: _Optional[float] = ..., pinball: _Optional[float] = ..., bias: _Optional[float] = ..., coverage_80: _Optional[float] = ...) -> None: ...

class ForecastAccuracy(_message.Message):
    __slots__ = ("region", "window_start", "window_end", "rows")
    REGION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    region: str
    window_start: str
    window_end: str
    rows: _containers.RepeatedCompositeFieldContainer[AccuracyRow]
    def __init__(self, region: _Optional[str] = ..., window_start: _Optional[str] = ..., window_end: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[AccuracyRow, _Mapping]]] = ...) -> None: ...

class ListModelDecisionsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ModelDecision(_message.Message):
    __slots__ = ("decided_at", "champion", "challenger", "metric", "champion_score", "challenger_score", "margin", "promoted", "champion_path", "challenger_path", "backtest_start", "backtest_end")
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_FIELD_NUMBER: _ClassVar[int]
    CHALLENGER_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_SCORE_FIELD_NUMBER: _ClassVar[int]
    CHALLENGER_SCORE_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_PATH_FIELD_NUMBER: _ClassVar[int]
    CHALLENGER_PATH_FIELD_NUMBER: _ClassVar[int]
    BACKTEST_START_FIELD_NUMBER: _ClassVar[int]
    BACKTEST_END_FIELD_NUMBER: _ClassVar[int]
    decided_at: str
    champion: ModelRef
    challenger: ModelRef
    metric: str
    champion_score: float
    challenger_score: float
    margin: float
    promoted: bool
    champion_path: str
    challenger_path: str
    backtest_start: str
    backtest_end: str
    def __init__(self, decided_at: _Optional[str] = ..., champion: _Optional[_Union[ModelRef, _Mapping]] = ..., challenger: _Optional[_Union[ModelRef, _Mapping]] = ..., metric: _Optional[str] = ..., champion_score: _Optional[float] = ..., challenger_score: _Optional[float] = ..., margin: _Optional[float] = ..., promoted: _Optional[bool] = ..., champion_path: _Optional[str] = ..., challenger_path: _Optional[str] = ..., backtest_start: _Optional[str] = ..., backtest_end: _Optional[str] = ...) -> None: ...

class ListModelDecisionsResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[ModelDecision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[ModelDecision, _Mapping]]] = ...) -> None: ...
