"""Scheduled issue: the Serve deployment that issues each region's forecast on a clock and archives it.

Slots are fixed points of the UTC clock (`clock: wall`, the default): slot k starts at k * every_s and is
issued offset_s later (hourly at :05 by default, so that the hour's readings have arrived); its forecast is
the one ForecastRegion gives from now. With `clock: data` every new hour of a region's readings is a slot,
issued from that hour: a replayed or back-filled feed is archived as live operation would have issued it,
whatever the replay's speed. Either way the forecast is stored with its slot as the key (`models.archive`):
the unique key (region, slot) makes it one forecast per region and slot however many schedulers run (the
test runs two), not a convention. The schedule is the deployment's user_config: a new one applies at once.

When the scheduler (re)starts, slots that passed without a forecast since the region's last archived one
(at most `max_late_slots`, the newest) are issued at once, flagged late, each from the readings held then up
to its own hour (an issue time in the past reads its window from the store), or from now when the
readings do not reach that far (a replayed feed behind the wall clock). A region's very first slot is
issued on time and nothing before it is back-filled.

The same loop triggers the anomaly scans on arrival every `scan_every_s` (on a Forecaster replica, which
holds the detector) and, with `retrain_every_s`, `energyopt retrain` against the served model (a Ray task
running the command: its decision lands in the store, and the replicas follow a promotion).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import ray
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from models import archive
from models.store import Store
from serving.api.energyopt.v1 import forecast_pb2 as pb
from serving.archive import archive_response
from serving.engine import ApiError
from serving.metrics import StoreGauges, record_issued

logger = logging.getLogger("ray.serve")


class ScheduleConfig(BaseModel):
    """The Scheduler deployment's `user_config` in serve.yaml: when and what the service issues on its own
    (applied to the running scheduler without a restart)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Issue forecasts on the schedule (false: only on demand).")
    clock: Literal["wall", "data"] = Field("wall", description="wall: slots of the UTC clock; data: every "
                                                                 "new hour of the region's readings is a slot.")
    every_s: int = Field(3600, ge=1, description="wall: slot length in seconds (3600: hourly).")
    offset_s: int = Field(300, ge=0, description="wall: issue this long after each slot starts (300: :05).")
    poll_s: float = Field(1.0, gt=0, description="data: how often to look for new hours of readings.")
    horizon: int = Field(48, ge=1, description="Hours ahead to issue (capped at the model's horizon).")
    quantiles: list[float] = Field(default_factory=list, description="Levels to issue (empty: all offered).")
    regions: list[str] = Field(default_factory=list, description="Regions to issue (empty: every region).")
    max_late_slots: int = Field(48, ge=0, description="Most missed slots issued late after a restart.")
    scan_every_s: float = Field(60, gt=0, description="Anomaly scans of newly arrived readings, this often.")
    metrics_every_s: float = Field(15, gt=0, description="Data age and open anomaly gauges (serving/metrics.py) "
                                                         "read from the store this often.")
    accuracy_every_s: float = Field(60, gt=0, description="Live accuracy gauges (the last 7 days' MAE and "
                                                          "MAPE per zone and horizon bucket), this often.")
    retrain_every_s: int | None = Field(None, ge=1, description="Run `energyopt retrain` this often against the "
                                                                   "served model (604800: weekly); none: never.")
    retrain_dir: str = Field("runs/retrain", description="Where each retraining writes its challenger.")
    retrain_args: list[str] = Field(default_factory=list, description="More `energyopt retrain` options, e.g. "
                                                                        "['--backtest-days', '28'].")


def slot_of(now: float, every_s: int, offset_s: int) -> int:
    """The newest slot (UTC seconds of its start) whose issue moment has come at `now`."""
    return int(math.floor((now - offset_s) / every_s)) * every_s


def due_slots(last: int | None, now: float, every_s: int, offset_s: int, max_late: int) -> list[tuple[int, bool]]:
    """(slot, late) to issue at `now` after the region's newest archived slot `last` (None: none yet, so only
    the current slot), oldest first; a slot is late once the next slot's issue moment has passed."""
    current = slot_of(now, every_s, offset_s)
    if last is None:
        return [(current, False)]
    first = max(last + every_s, current - max_late * every_s)  # the newest max_late + 1, never a huge list
    return [(s, now >= s + every_s + offset_s) for s in range(first, current + 1, every_s)]


@ray.remote(num_cpus=1)
def _run_command(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """A command's exit code and the end of its output (a scheduled `energyopt retrain`), with `env` added
    to the worker's environment."""
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | env)
    return done.returncode, (done.stdout + done.stderr)[-4000:]


def local_hour(seconds: int, time_zone: str) -> str:
    """A UTC hour on the wall clock of `time_zone` (naive ISO 8601, as the API's issue times)."""
    return pd.Timestamp(seconds, unit="s", tz="UTC").tz_convert(time_zone).tz_localize(None).isoformat()


def data_slots(last: int | None, history_end: str, time_zone: str, max_late: int) -> list[tuple[int, bool]]:
    """The data clock's (slot, late) to issue: every hour of readings after the newest archived slot `last`
    up to the region's next hour (`history_end` + 1 h, its wall clock), oldest first; all but the newest are
    late (issued after later readings had arrived). None archived yet: only the newest."""
    hour = pd.Timestamp(history_end) + pd.Timedelta(hours=1)
    current = hour.tz_localize(time_zone, ambiguous=True, nonexistent="shift_forward").tz_convert("UTC")
    current = int(current.timestamp())
    if last is None:
        return [(current, False)]
    first = max(last + 3600, current - max_late * 3600)
    return [(s, s < current) for s in range(first, current + 1, 3600)]


@serve.deployment(name="Scheduler", num_replicas=1, max_ongoing_requests=8, ray_actor_options={"num_cpus": 0})
class Scheduler:
    """Issues and archives the scheduled forecasts (forecasts come from the Forecaster deployment, through
    its handle, so the model is loaded once per Forecaster replica, not here) and triggers the scans."""

    def __init__(self, args: dict) -> None:
        """`args`: the application's (serving.app.AppArgs): the store is the one setting read here."""
        self.config = ScheduleConfig()  # until Serve calls reconfigure with the deployment's user_config
        self.store = Store.open(args.get("store"))
        self.last: dict[str, int | None] = {}  # region -> newest archived slot (read once, then kept)
        self._zone_tz: dict[str, str] = {}  # zone -> its time zone
        self.issued = self.late = self.skipped = self.retrained = 0
        self.errors: dict[str, str] = {}  # region -> the last error, logged once per change
        self.forecaster: Any = None
        self._last_scan = 0.0
        self._started = time.time()
        self._retraining: asyncio.Task | None = None
        self._task = asyncio.get_running_loop().create_task(self._loop())
        self._gauges = asyncio.get_running_loop().create_task(self._gauge_loop())

    async def reconfigure(self, user_config: dict) -> None:
        """A new schedule, applied at the next tick (no restart)."""
        config = ScheduleConfig.model_validate(user_config or {})
        if config.clock != self.config.clock:
            self.last.clear()  # read the archive again: the other clock's slots were kept here
        self.config = config
        logger.info("schedule: %s", self.config.model_dump())

    def _handle(self) -> Any:
        if self.forecaster is None:
            context = serve.get_replica_context()
            self.forecaster = serve.get_deployment_handle("Forecaster", app_name=context.app_name)
        return self.forecaster

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the schedule must outlive any one failure; the log has it
                logger.exception("scheduler tick failed")
            await asyncio.sleep(self._pause(time.time()))

    async def _gauge_loop(self) -> None:
        """The store-level gauges on a loop of their own (a slow accuracy query never delays a slot): data
        age and open anomalies every metrics_every_s, live accuracy every accuracy_every_s, each read on a
        thread. Errors (a store that cannot be reached) are logged once each and the loop goes on."""
        gauges, accuracy_at, failing = StoreGauges(self.store), -math.inf, ""
        while True:
            try:
                await asyncio.to_thread(gauges.freshness, self.config.clock)
                if time.monotonic() - accuracy_at >= self.config.accuracy_every_s:
                    accuracy_at = time.monotonic()
                    await asyncio.to_thread(gauges.accuracy)
                failing = ""
            except Exception as err:  # noqa: BLE001 - the gauges must outlive any one failure
                if str(err) != failing:
                    logger.warning("store gauges: %s (retrying every %g s)", err, self.config.metrics_every_s)
                failing = str(err)
            await asyncio.sleep(self.config.metrics_every_s)

    def _pause(self, now: float) -> float:
        """Seconds to the next slot's issue moment or scan, whichever comes first (0.05 .. 30)."""
        c = self.config
        wait = [c.scan_every_s - (now - self._last_scan)]
        if c.enabled:
            wait.append(c.poll_s if c.clock == "data" else
                        slot_of(now, c.every_s, c.offset_s) + c.every_s + c.offset_s - now)
        return min(max(min(wait), 0.05), 30.0)

    async def tick(self, now: float | None = None) -> None:
        """Issue every due slot of every region, then scan new readings if it is time."""
        now = time.time() if now is None else now
        c = self.config
        if c.enabled:
            info = await self._handle().GetModelInfo.remote(pb.GetModelInfoRequest())
            regions = {r.name: r for r in info.regions}
            for region in (c.regions or list(regions)):
                if region not in regions:
                    self._error(region, f"region {region!r} of the schedule is not served (served: {sorted(regions)})")
                    continue
                await self._issue_due(region, regions[region], info, now)
        if c.retrain_every_s and self._retraining is None:
            await self._retrain_if_due(now)
        if now - self._last_scan >= c.scan_every_s:
            self._last_scan = now
            try:
                await self._handle().scan_arrivals.remote()
            except AttributeError:  # a Forecaster without scans (older code): nothing to trigger
                pass

    async def _issue_due(self, region: str, served: Any, info: pb.ModelInfo, now: float) -> None:
        c = self.config
        if region not in self.last:
            self.last[region] = await asyncio.to_thread(archive.last_slot, self.store, region)
        zones = list(served.zones)
        time_zone = await asyncio.to_thread(self._time_zone, zones)
        if c.clock == "data":
            if not served.history_end:
                return  # no readings yet
            due = data_slots(self.last[region], served.history_end, time_zone, c.max_late_slots)
        else:
            due = due_slots(self.last[region], now, c.every_s, c.offset_s, c.max_late_slots)
        if due and len(due) > 1:
            held = await asyncio.to_thread(archive.slots_held, self.store, region, due[0][0], due[-1][0])
            due = [(s, late) for s, late in due if s not in held]
        for slot, late in due:
            request = pb.ForecastRegionRequest(region=region, horizon=min(c.horizon, info.max_horizon),
                                               quantiles=c.quantiles)
            if c.clock == "data":  # the slot is the issue hour
                request.issue_time = local_hour(slot, time_zone)
            elif late:
                request.issue_time = self._late_issue(slot, served.history_end, time_zone)
            try:
                response = await self._handle().ForecastRegion.remote(request)
            except Exception as err:  # noqa: BLE001 - ApiError (through Ray) or a replica lost: retried next tick
                code = err.code.name + ": " if isinstance(err, ApiError) else ""
                self._error(region, f"slot {archive.slot_id(region, slot)}: {code}{getattr(err, 'message', err)}")
                return  # tried again at the next tick (and late, once its time has passed)
            forecast_id = await asyncio.to_thread(archive_response, self.store, response, time_zone,
                                                  slot_ts=slot, late=late)
            self.last[region] = max(slot, self.last[region] or slot)
            if forecast_id is None:
                self.skipped += 1  # another scheduler issued this slot first
                continue
            self.issued += 1
            self.late += late
            record_issued(region, late)
            self.errors.pop(region, None)
            if late:
                logger.warning("issued %s late (issue time %s)", forecast_id, response.issue_time)

    async def _retrain_if_due(self, now: float) -> None:
        """Start `energyopt retrain` when `retrain_every_s` has passed since the store's newest decision (or
        since this scheduler started): in a Ray task of its own (one CPU), as a command, so that serving
        never imports training; the decision lands in the store and the replicas follow a promotion."""
        from models.decisions import list_decisions

        newest = await asyncio.to_thread(list_decisions, self.store, 1)
        since = max([self._started, *(d.decided_at for d in newest)])
        if now - since < self.config.retrain_every_s:
            return
        champion = await self._handle().served_bundle_path.remote()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        out = Path(self.config.retrain_dir).expanduser().resolve() / f"challenger-{stamp}"
        # the store's URL goes in the environment, not on the command line (where `ps` would show a password)
        command = [sys.executable, "-m", "energyopt", "retrain", "--champion", champion,
                   "--out", str(out), "--quiet", *self.config.retrain_args]
        self._started = now  # the next run counts from this one, even if it fails
        self._retraining = asyncio.get_running_loop().create_task(self._retrain(command))

    async def _retrain(self, command: list[str]) -> None:
        try:
            code, output = await _run_command.remote(command, {"ENERGYOPT_STORE": self.store.url})
            (logger.info if code == 0 else logger.error)("scheduled retraining (%s) ended %d: %s",
                                                          " ".join(command), code, output)
            self.retrained += code == 0
        except Exception:  # noqa: BLE001 - the schedule goes on; the next run is retrain_every_s later
            logger.exception("scheduled retraining failed to run")
        finally:
            self._retraining = None

    def _time_zone(self, zones: list[str]) -> str:
        """The region's time zone, read once per zone (a registered zone's spec never changes)."""
        if zones and zones[0] not in self._zone_tz:
            self._zone_tz.update((z, spec.time_zone) for z, spec in self.store.zones().items())
        return self._zone_tz.get(zones[0], "UTC") if zones else "UTC"

    @staticmethod
    def _late_issue(slot: int, history_end: str, time_zone: str) -> str:
        """The issue time of a late slot: the hour its readings were complete, on the region's wall clock,
        unless the readings held do not reach it (then from now: '')."""
        hour = local_hour(slot // 3600 * 3600, time_zone)
        if not history_end or pd.Timestamp(hour) > pd.Timestamp(history_end) + pd.Timedelta(hours=1):
            return ""
        return hour

    def _error(self, region: str, message: str) -> None:
        if self.errors.get(region) != message:
            logger.warning("schedule of %s: %s", region, message)
        self.errors[region] = message

    async def status(self) -> dict:
        """Counters of this scheduler (tests and operators)."""
        return {"issued": self.issued, "late": self.late, "skipped": self.skipped, "retrained": self.retrained,
                "retraining": self._retraining is not None, "errors": dict(self.errors), "last": dict(self.last)}

    async def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError("the schedule loop stopped")
        if self._gauges.done():
            raise RuntimeError("the store gauges loop stopped")
