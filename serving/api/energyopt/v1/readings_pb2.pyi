from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Reading(_message.Message):
    __slots__ = ("zone", "timestamp", "value")
    ZONE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    zone: str
    timestamp: str
    value: float
    def __init__(self, zone: _Optional[str] = ..., timestamp: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class ZoneSpec(_message.Message):
    __slots__ = ("zone", "region", "resolution_s", "time_zone")
    ZONE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_S_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    zone: str
    region: str
    resolution_s: int
    time_zone: str
    def __init__(self, zone: _Optional[str] = ..., region: _Optional[str] = ..., resolution_s: _Optional[int] = ..., time_zone: _Optional[str] = ...) -> None: ...

class IngestReadingsRequest(_message.Message):
    __slots__ = ("readings", "register")
    READINGS_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    readings: _containers.RepeatedCompositeFieldContainer[Reading]
    register: _containers.RepeatedCompositeFieldContainer[ZoneSpec]
    def __init__(self, readings: _Optional[_Iterable[_Union[Reading, _Mapping]]] = ..., register: _Optional[_Iterable[_Union[ZoneSpec, _Mapping]]] = ...) -> None: ...

class RejectedReading(_message.Message):
    __slots__ = ("index", "zone", "timestamp", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    zone: str
    timestamp: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., zone: _Optional[str] = ..., timestamp: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class IngestAck(_message.Message):
    __slots__ = ("batch", "received", "inserted", "replaced", "unchanged", "rejected", "watermark", "registered")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    INSERTED_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    batch: int
    received: int
    inserted: int
    replaced: int
    unchanged: int
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedReading]
    watermark: int
    registered: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, batch: _Optional[int] = ..., received: _Optional[int] = ..., inserted: _Optional[int] = ..., replaced: _Optional[int] = ..., unchanged: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[RejectedReading, _Mapping]]] = ..., watermark: _Optional[int] = ..., registered: _Optional[_Iterable[str]] = ...) -> None: ...

class ListZonesRequest(_message.Message):
    __slots__ = ("region",)
    REGION_FIELD_NUMBER: _ClassVar[int]
    region: str
    def __init__(self, region: _Optional[str] = ...) -> None: ...

class ZoneStatus(_message.Message):
    __slots__ = ("spec", "last_reading", "readings")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    LAST_READING_FIELD_NUMBER: _ClassVar[int]
    READINGS_FIELD_NUMBER: _ClassVar[int]
    spec: ZoneSpec
    last_reading: str
    readings: int
    def __init__(self, spec: _Optional[_Union[ZoneSpec, _Mapping]] = ..., last_reading: _Optional[str] = ..., readings: _Optional[int] = ...) -> None: ...

class ListZonesResponse(_message.Message):
    __slots__ = ("zones", "watermark", "default_region")
    ZONES_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_REGION_FIELD_NUMBER: _ClassVar[int]
    zones: _containers.RepeatedCompositeFieldContainer[ZoneStatus]
    watermark: int
    default_region: str
    def __init__(self, zones: _Optional[_Iterable[_Union[ZoneStatus, _Mapping]]] = ..., watermark: _Optional[int] = ..., default_region: _Optional[str] = ...) -> None: ...

class ListReadingsRequest(_message.Message):
    __slots__ = ("region", "zones", "hours", "since", "until", "max_points")
    REGION_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    HOURS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    region: str
    zones: _containers.RepeatedScalarFieldContainer[str]
    hours: int
    since: str
    until: str
    max_points: int
    def __init__(self, region: _Optional[str] = ..., zones: _Optional[_Iterable[str]] = ..., hours: _Optional[int] = ..., since: _Optional[str] = ..., until: _Optional[str] = ..., max_points: _Optional[int] = ...) -> None: ...

class ZoneReadings(_message.Message):
    __slots__ = ("zone", "timestamps", "values", "truncated", "resolution_s")
    ZONE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_S_FIELD_NUMBER: _ClassVar[int]
    zone: str
    timestamps: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedScalarFieldContainer[float]
    truncated: bool
    resolution_s: int
    def __init__(self, zone: _Optional[str] = ..., timestamps: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[float]] = ..., truncated: _Optional[bool] = ..., resolution_s: _Optional[int] = ...) -> None: ...

class ListReadingsResponse(_message.Message):
    __slots__ = ("series", "watermark", "since", "until")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    series: _containers.RepeatedCompositeFieldContainer[ZoneReadings]
    watermark: int
    since: str
    until: str
    def __init__(self, series: _Optional[_Iterable[_Union[ZoneReadings, _Mapping]]] = ..., watermark: _Optional[int] = ..., since: _Optional[str] = ..., until: _Optional[str] = ...) -> None: ...
