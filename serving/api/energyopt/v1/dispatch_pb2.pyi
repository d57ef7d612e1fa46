from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DispatchSite(_message.Message):
    __slots__ = ("name", "load_kw", "zone", "zone_share", "import_price", "export_price", "battery_kwh", "soc_min_kwh", "soc_initial_kwh", "soc_terminal_kwh", "charge_kw", "discharge_kw", "charge_efficiency", "discharge_efficiency", "degradation_cost", "demand_charge", "peak_floor_kw", "import_limit_kw", "export_limit_kw", "flex_kwh_per_day", "flex_max_kw", "flex_allowed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOAD_KW_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ZONE_SHARE_FIELD_NUMBER: _ClassVar[int]
    IMPORT_PRICE_FIELD_NUMBER: _ClassVar[int]
    EXPORT_PRICE_FIELD_NUMBER: _ClassVar[int]
    BATTERY_KWH_FIELD_NUMBER: _ClassVar[int]
    SOC_MIN_KWH_FIELD_NUMBER: _ClassVar[int]
    SOC_INITIAL_KWH_FIELD_NUMBER: _ClassVar[int]
    SOC_TERMINAL_KWH_FIELD_NUMBER: _ClassVar[int]
    CHARGE_KW_FIELD_NUMBER: _ClassVar[int]
    DISCHARGE_KW_FIELD_NUMBER: _ClassVar[int]
    CHARGE_EFFICIENCY_FIELD_NUMBER: _ClassVar[int]
    DISCHARGE_EFFICIENCY_FIELD_NUMBER: _ClassVar[int]
    DEGRADATION_COST_FIELD_NUMBER: _ClassVar[int]
    DEMAND_CHARGE_FIELD_NUMBER: _ClassVar[int]
    PEAK_FLOOR_KW_FIELD_NUMBER: _ClassVar[int]
    IMPORT_LIMIT_KW_FIELD_NUMBER: _ClassVar[int]
    EXPORT_LIMIT_KW_FIELD_NUMBER: _ClassVar[int]
    FLEX_KWH_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    FLEX_MAX_KW_FIELD_NUMBER: _ClassVar[int]
    FLEX_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    name: str
    load_kw: _containers.RepeatedScalarFieldContainer[float]
    zone: str
    zone_share: float
    import_price: _containers.RepeatedScalarFieldContainer[float]
    export_price: _containers.RepeatedScalarFieldContainer[float]
    battery_kwh: float
    soc_min_kwh: float
    soc_initial_kwh: float
    soc_terminal_kwh: float
    charge_kw: float
    discharge_kw: float
    charge_efficiency: float
    discharge_efficiency: float
    degradation_cost: float
    demand_charge: float
    peak_floor_kw: float
    import_limit_kw: float
    export_limit_kw: float
    flex_kwh_per_day: float
    flex_max_kw: float
    flex_allowed: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, name: _Optional[str] = ..., load_kw: _Optional[_Iterable[float]] = ..., zone: _Optional[str] = ..., zone_share: _Optional[float] = ..., import_price: _Optional[_Iterable[float]] = ..., export_price: _Optional[_Iterable[float]] = ..., battery_kwh: _Optional[float] = ..., soc_min_kwh: _Optional[float] = ..., soc_initial_kwh: _Optional[float] = ..., soc_terminal_kwh: _Optional[float] = ..., charge_kw: _Optional[float] = ..., discharge_kw: _Optional[float] = ..., charge_efficiency: _Optional[float] = ..., discharge_efficiency: _Optional[float] = ..., degradation_cost: _Optional[float] = ..., demand_charge: _Optional[float] = ..., peak_floor_kw: _Optional[float] = ..., import_limit_kw: _Optional[float] = ..., export_limit_kw: _Optional[float] = ..., flex_kwh_per_day: _Optional[float] = ..., flex_max_kw: _Optional[float] = ..., flex_allowed: _Optional[_Iterable[bool]] = ...) -> None: ...

class OptimizeDispatchRequest(_message.Message):
    __slots__ = ("sites", "step_minutes")
    SITES_FIELD_NUMBER: _ClassVar[int]
    STEP_MINUTES_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedCompositeFieldContainer[DispatchSite]
    step_minutes: int
    def __init__(self, sites: _Optional[_Iterable[_Union[DispatchSite, _Mapping]]] = ..., step_minutes: _Optional[int] = ...) -> None: ...

class SiteSchedule(_message.Message):
    __slots__ = ("name", "status", "reason", "cost", "cost_without_battery", "peak_kw", "peak_without_battery_kw", "iterations", "charge_kw", "discharge_kw", "soc_kwh", "import_kw", "export_kw", "flex_kw", "load_kw")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    COST_WITHOUT_BATTERY_FIELD_NUMBER: _ClassVar[int]
    PEAK_KW_FIELD_NUMBER: _ClassVar[int]
    PEAK_WITHOUT_BATTERY_KW_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    CHARGE_KW_FIELD_NUMBER: _ClassVar[int]
    DISCHARGE_KW_FIELD_NUMBER: _ClassVar[int]
    SOC_KWH_FIELD_NUMBER: _ClassVar[int]
    IMPORT_KW_FIELD_NUMBER: _ClassVar[int]
    EXPORT_KW_FIELD_NUMBER: _ClassVar[int]
    FLEX_KW_FIELD_NUMBER: _ClassVar[int]
    LOAD_KW_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: str
    reason: str
    cost: float
    cost_without_battery: float
    peak_kw: float
    peak_without_battery_kw: float
    iterations: int
    charge_kw: _containers.RepeatedScalarFieldContainer[float]
    discharge_kw: _containers.RepeatedScalarFieldContainer[float]
    soc_kwh: _containers.RepeatedScalarFieldContainer[float]
    import_kw: _containers.RepeatedScalarFieldContainer[float]
    export_kw: _containers.RepeatedScalarFieldContainer[float]
    flex_kw: _containers.RepeatedScalarFieldContainer[float]
    load_kw: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., cost: _Optional[float] = ..., cost_without_battery: _Optional[float] = ..., peak_kw: _Optional[float] = ..., peak_without_battery_kw: _Optional[float] = ..., iterations: _Optional[int] = ..., charge_kw: _Optional[_Iterable[float]] = ..., discharge_kw: _Optional[_Iterable[float]] = ..., soc_kwh: _Optional[_Iterable[float]] = ..., import_kw: _Optional[_Iterable[float]] = ..., export_kw: _Optional[_Iterable[float]] = ..., flex_kw: _Optional[_Iterable[float]] = ..., load_kw: _Optional[_Iterable[float]] = ...) -> None: ...

class OptimizeDispatchResponse(_message.Message):
    __slots__ = ("sites", "total_cost", "total_cost_without_battery", "solve_seconds")
    SITES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_WITHOUT_BATTERY_FIELD_NUMBER: _ClassVar[int]
    SOLVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedCompositeFieldContainer[SiteSchedule]
    total_cost: float
    total_cost_without_battery: float
    solve_seconds: float
    def __init__(self, sites: _Optional[_Iterable[_Union[SiteSchedule, _Mapping]]] = ..., total_cost: _Optional[float] = ..., total_cost_without_battery: _Optional[float] = ..., solve_seconds: _Optional[float] = ...) -> None: ...
