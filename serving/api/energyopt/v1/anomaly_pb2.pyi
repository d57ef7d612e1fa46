from serving.api.energyopt.v1 import forecast_pb2 as _forecast_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DetectAnomaliesRequest(_message.Message):
    __slots__ = ("model", "zones", "start", "end", "series", "include_scores")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SCORES_FIELD_NUMBER: _ClassVar[int]
    model: str
    zones: _containers.RepeatedScalarFieldContainer[str]
    start: str
    end: str
    series: _containers.RepeatedCompositeFieldContainer[LoadSeries]
    include_scores: bool
    def __init__(self, model: _Optional[str] = ..., zones: _Optional[_Iterable[str]] = ..., start: _Optional[str] = ..., end: _Optional[str] = ..., series: _Optional[_Iterable[_Union[LoadSeries, _Mapping]]] = ..., include_scores: _Optional[bool] = ...) -> None: ...

class LoadSeries(_message.Message):
    __slots__ = ("name", "values", "start")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedScalarFieldContainer[float]
    start: str
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ..., start: _Optional[str] = ...) -> None: ...

class AnomalyEvent(_message.Message):
    __slots__ = ("zone", "start", "end", "severity", "expected", "observed", "component", "hours")
    ZONE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    HOURS_FIELD_NUMBER: _ClassVar[int]
    zone: str
    start: str
    end: str
    severity: float
    expected: float
    observed: float
    component: str
    hours: int
    def __init__(self, zone: _Optional[str] = ..., start: _Optional[str] = ..., end: _Optional[str] = ..., severity: _Optional[float] = ..., expected: _Optional[float] = ..., observed: _Optional[float] = ..., component: _Optional[str] = ..., hours: _Optional[int] = ...) -> None: ...

class SeriesScores(_message.Message):
    __slots__ = ("name", "start", "score", "expected", "observed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    name: str
    start: str
    score: _containers.RepeatedScalarFieldContainer[float]
    expected: _containers.RepeatedScalarFieldContainer[float]
    observed: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., start: _Optional[str] = ..., score: _Optional[_Iterable[float]] = ..., expected: _Optional[_Iterable[float]] = ..., observed: _Optional[_Iterable[float]] = ...) -> None: ...

class DetectAnomaliesResponse(_message.Message):
    __slots__ = ("model", "events", "scores", "scored_hours", "reference_hours")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    SCORED_HOURS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_HOURS_FIELD_NUMBER: _ClassVar[int]
    model: _forecast_pb2.ModelRef
    events: _containers.RepeatedCompositeFieldContainer[AnomalyEvent]
    scores: _containers.RepeatedCompositeFieldContainer[SeriesScores]
    scored_hours: int
    reference_hours: int
    def __init__(self, model: _Optional[_Union[_forecast_pb2.ModelRef, _Mapping]] = ..., events: _Optional[_Iterable[_Union[AnomalyEvent, _Mapping]]] = ..., scores: _Optional[_Iterable[_Union[SeriesScores, _Mapping]]] = ..., scored_hours: _Optional[int] = ..., reference_hours: _Optional[int] = ...) -> None: ...

class ListAnomaliesRequest(_message.Message):
    __slots__ = ("region", "zone", "since", "open_only", "limit")
    REGION_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    OPEN_ONLY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    region: str
    zone: str
    since: str
    open_only: bool
    limit: int
    def __init__(self, region: _Optional[str] = ..., zone: _Optional[str] = ..., since: _Optional[str] = ..., open_only: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class StoredAnomaly(_message.Message):
    __slots__ = ("id", "zone", "region", "kind", "start", "end", "open", "severity", "detail", "opened_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    zone: str
    region: str
    kind: str
    start: str
    end: str
    open: bool
    severity: float
    detail: str
    opened_at: str
    updated_at: str
    def __init__(self, id: _Optional[str] = ..., zone: _Optional[str] = ..., region: _Optional[str] = ..., kind: _Optional[str] = ..., start: _Optional[str] = ..., end: _Optional[str] = ..., open: _Optional[bool] = ..., severity: _Optional[float] = ..., detail: _Optional[str] = ..., opened_at: _Optional[str] = ..., updated_at: _Optional[str] = ...) -> None: ...

class ListAnomaliesResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[StoredAnomaly]
    def __init__(self, events: _Optional[_Iterable[_Union[StoredAnomaly, _Mapping]]] = ...) -> None: ...
