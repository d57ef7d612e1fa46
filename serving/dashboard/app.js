// energyopt operator dashboard: plain ES2020, no build step, one file. It reads only the service's own
// HTTP/JSON API (the proto messages in proto3 JSON form, field names as in proto/energyopt/v1/*.proto) and
// draws with the vendored uPlot. docs/dashboard.md describes the pages, the polling and the fleet CSV.
"use strict";

(() => {
  const HOUR = 3600;
  const WINDOW_HOURS = 168;        // the overview's readings: the last 7 days
  const FORECAST_HOURS = 48;       // on-demand forecast horizon when the archive has none
  const EAGER_ZONES = 24;          // up to this many zone charts are drawn at once; more: when scrolled into view
  const ANOMALY_DAYS = 60;         // anomaly charts reach back to their oldest event, at most this far
  const ACCURACY_FORECASTS = 6;    // archived forecasts overlaid on the readings: the newest and one a day
  const FULL_REFRESH_MS = 5 * 60e3; // readings are refetched whole this often (corrections of older hours)
  const REQUEST_TIMEOUT_MS = 15e3;
  const PAGES = ["overview", "accuracy", "anomalies", "dispatch", "model"];
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];
  const BAND_FILL = "rgba(214, 39, 40, 0.15)";

  // The contract tests read: charts by name, timings, the last successful poll, the errors seen.
  const eo = window.energyopt = { charts: {}, timings: {}, lastUpdate: null, errors: [] };
  // first paint of the shell: the browser's first-contentful-paint, else the first animation frame
  if ((PerformanceObserver.supportedEntryTypes || []).includes("paint")) {
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        if (entry.name === "first-contentful-paint") eo.timings.firstPaint = Math.round(entry.startTime);
      }
    }).observe({ type: "paint", buffered: true });
  } else {
    requestAnimationFrame(() => { eo.timings.firstPaint = Math.round(performance.now()); });
  }

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

  // ------------------------------------------------------------------------------------------ settings

  const params = new URLSearchParams(location.search);
  const notices = [];
  const POLL_MS = (() => {
    const text = params.get("poll");
    if (text === null || text === "") return 2000;
    const ms = Number(text);
    if (!Number.isFinite(ms) || ms < 250) {
      notices.push(`poll=${text} is not a number of milliseconds of at least 250; polling every 2 s instead.`);
      return 2000;
    }
    return Math.round(ms);
  })();
  const POLL_TEXT = POLL_MS % 1000 === 0 ? `${POLL_MS / 1000} s` : `${POLL_MS} ms`;

  // ------------------------------------------------------------------------------------------ the API

  class ApiFailure extends Error {
    constructor(path, status, code, detail) {
      super(status ? `HTTP ${status}${code ? " " + code : ""}: ${detail}` : detail);
      this.path = path;
      this.status = status;
      this.code = code;
      this.detail = detail;
    }
    // a failure of the service itself (down, restarting, overloaded), not a refusal of this request
    get unreachable() { return this.status === 0 || this.status >= 500; }
  }

  // The service's API key (docs/security.md), if it asks for one: kept for this tab only (sessionStorage),
  // sent as the Authorization header of every API call.
  const KEY_STORAGE = "energyopt.apiKey";
  function apiKey() {
    try { return sessionStorage.getItem(KEY_STORAGE) || ""; } catch { return ""; }
  }

  async function api(path, init = {}) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
    const key = apiKey();
    let response;
    try {
      response = await fetch(path, { ...init, signal: abort.signal,
                                     headers: { accept: "application/json", ...(init.headers || {}),
                                                ...(key ? { authorization: `Bearer ${key}` } : {}) } });
    } catch (err) {
      throw new ApiFailure(path, 0, "", err.name === "AbortError"
        ? `no answer within ${REQUEST_TIMEOUT_MS / 1000} s` : `network error: ${err.message}`);
    } finally {
      clearTimeout(timer);
    }
    let body = null;
    try { body = await response.json(); } catch { body = null; }
    if (!response.ok) {
      throw new ApiFailure(path, response.status, (body && body.code) || "",
                           (body && body.message) || response.statusText || "no message");
    }
    if (body === null) throw new ApiFailure(path, response.status, "", "the answer is not JSON");
    return body;
  }

  function query(path, values) {
    const q = new URLSearchParams();
    for (const [key, value] of Object.entries(values)) {
      if (value === undefined || value === null || value === "") continue;
      for (const v of Array.isArray(value) ? value : [value]) q.append(key, String(v));
    }
    const text = q.toString();
    return text ? `${path}?${text}` : path;
  }

  class Problem extends Error {}  // a state of the service the dashboard explains in its own words

  function failureText(err) {
    if (err instanceof Problem) return err.message;
    if (err instanceof ApiFailure && err.unreachable) {
      return `Cannot reach the energyopt API (${err.message}); retrying every ${POLL_TEXT}`;
    }
    if (err instanceof ApiFailure && err.status === 401) {
      return `The energyopt API needs an API key: enter one in the "API key" field at the top (${err.message})`;
    }
    if (err instanceof ApiFailure && err.status === 403) {
      return `This API key may not use ${err.path.split("?")[0]}: enter one with that role (${err.message})`;
    }
    if (err instanceof ApiFailure) return `The energyopt API refused ${err.path.split("?")[0]} (${err.message})`;
    return `The dashboard failed: ${err && err.message ? err.message : err}`;
  }

  function recordError(text) {
    eo.errors.push(`${new Date().toISOString()} ${text}`);
    if (eo.errors.length > 200) eo.errors.splice(0, eo.errors.length - 200);
  }

  // ------------------------------------------------------------------------------------------ time

  // Readings and events are UTC instants ("...Z"); forecast hours are the region's wall clock without an
  // offset (forecast.proto): read them in the region's IANA time zone.
  const zoneFormats = new Map();
  function wallParts(epochS, tz) {
    let format = zoneFormats.get(tz);
    if (!format) {
      format = new Intl.DateTimeFormat("en-US", { timeZone: tz, hourCycle: "h23", year: "numeric", month: "2-digit",
                                                  day: "2-digit", hour: "2-digit", minute: "2-digit",
                                                  second: "2-digit", weekday: "short" });
      zoneFormats.set(tz, format);
    }
    const parts = {};
    for (const p of format.formatToParts(new Date(epochS * 1000))) parts[p.type] = p.value;
    return parts;
  }
  function offsetSeconds(epochS, tz) {  // wall clock minus UTC at that instant
    const p = wallParts(epochS, tz);
    return Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour % 24, +p.minute, +p.second) / 1000 - epochS;
  }
  const WALL = /^(\d{4})-(\d\d)-(\d\d)(?:[T ](\d\d):(\d\d)(?::(\d\d)(?:\.\d+)?)?)?$/;
  const parsed = new Map();  // every zone of an answer repeats the same hours: each is read once
  function parseTime(text, tz = "UTC") {  // epoch seconds, NaN for what is not a time
    if (!text) return NaN;
    const key = `${tz}|${text}`;
    let epoch = parsed.get(key);
    if (epoch === undefined) {
      if (parsed.size > 100000) parsed.clear();
      epoch = readTime(text, tz);
      parsed.set(key, epoch);
    }
    return epoch;
  }
  function readTime(text, tz) {
    if (/T.*(?:[zZ]|[+-]\d\d(?::?\d\d)?)$/.test(text)) return Date.parse(text) / 1000;
    const m = WALL.exec(text);
    if (!m) return NaN;
    const wall = Date.UTC(+m[1], +m[2] - 1, +m[3], +(m[4] || 0), +(m[5] || 0), +(m[6] || 0)) / 1000;
    if (!tz || tz === "UTC") return wall;
    const first = wall - offsetSeconds(wall, tz);
    return wall - offsetSeconds(first, tz);  // again at the guess: right across daylight-saving changes
  }
  const pad = (n) => String(n).padStart(2, "0");
  function formatTime(epochS, tz = "UTC") {
    if (!Number.isFinite(epochS)) return "–";
    const p = wallParts(epochS, tz);
    return `${p.year}-${p.month}-${p.day} ${pad(+p.hour % 24)}:${p.minute}`;
  }
  function isoUtc(epochS) { return new Date(epochS * 1000).toISOString().replace(".000Z", "Z"); }
  function formatAge(seconds) {
    if (!Number.isFinite(seconds)) return "–";
    const s = Math.max(0, seconds);
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 90 * 60) return `${Math.round(s / 60)} min`;
    if (s < 48 * HOUR) return `${Math.round(s / HOUR)} h`;
    if (s < 60 * 86400) return `${Math.round(s / 86400)} d`;
    if (s < 730 * 86400) return `${Math.round(s / (30.44 * 86400))} months`;
    return `${(s / (365.25 * 86400)).toFixed(1)} years`;
  }
  const numberFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });
  const fmt = (v, digits) => !Number.isFinite(v) ? "–" : digits === undefined ? numberFormat.format(v)
    : v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  const num = (v) => {  // proto3 JSON numbers: NaN/Infinity come as strings, int64 as strings
    const n = typeof v === "number" ? v : v === undefined || v === null ? NaN : Number(v);
    return Number.isFinite(n) ? n : NaN;
  };

  // ------------------------------------------------------------------------------------------ DOM helpers

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, String(value));
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }
  const row = (attrs, cells) => el("tr", attrs, ...cells.map((c) => c instanceof Node ? el("td", {}, c)
    : el("td", { text: c === undefined || c === null ? "" : String(c) })));

  function setMessage(page, text) {
    const node = $(`[data-message="${page}"]`);
    if (!node) return;
    node.textContent = text || "";
    node.hidden = !text;
  }

  function setStatus(ok, text) {
    const status = $("#status");
    status.dataset.state = ok ? "ok" : "error";
    status.textContent = text;
  }

  // ------------------------------------------------------------------------------------------ charts

  const resizer = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const u = eo.charts[entry.target.dataset.chart];
      const width = Math.floor(entry.contentRect.width);
      if (u && width > 0 && width !== u.width) u.setSize({ width, height: u.height });
    }
  });

  function countPoints(data) {
    let n = 0;
    for (let s = 1; s < data.length; s++) for (const v of data[s]) if (v !== null && Number.isFinite(v)) n++;
    return n;
  }

  // Draws `data` (uPlot's columns: x, then one array per series) into the chart div; makes the uPlot anew
  // when the series change, else only sets the data. `build(width, height)` returns uPlot's options.
  function draw(node, name, labels, data, build, extra = {}) {
    node.dataset.chart = name;
    node.hidden = false;
    const key = labels.join(",") + "|" + (extra.key || "");
    let u = eo.charts[name];
    if (u && (u.root.parentNode !== node || u._energyoptKey !== key)) {
      u.destroy();
      u = null;
    }
    if (!u) {
      node.textContent = "";
      const width = Math.max(200, Math.floor(node.clientWidth || node.parentNode.clientWidth || 600));
      const height = Number(node.dataset.height) || (node.classList.contains("chart-wide") ? 260 : 180);
      u = new uPlot(build(width, height), data, node);
      u._energyoptKey = key;
      eo.charts[name] = u;
      resizer.observe(node);
    } else {
      u.setData(data);
    }
    node.dataset.points = String(countPoints(data));
    node.dataset.series = labels.join(",");
    return u;
  }

  function forget(name) {
    const u = eo.charts[name];
    if (u) {
      resizer.unobserve(u.root.parentNode);
      u.destroy();
      delete eo.charts[name];
    }
  }

  function undraw(node) {  // no data: no chart (the page's message says why)
    if (node.dataset.chart) forget(node.dataset.chart);
    node.hidden = true;
    delete node.dataset.points;
    delete node.dataset.series;
  }

  const timeAxis = () => ({ stroke: "#555", grid: { stroke: "#eee" }, ticks: { stroke: "#ddd" } });
  function timeOptions(width, height, series, extra = {}) {
    const tz = state.tz;
    return {
      width, height, series: [{}, ...series],
      scales: { x: { time: true }, ...(extra.scales || {}) },
      axes: extra.axes || [timeAxis(), { ...timeAxis(), size: 60, values: (u, ticks) => ticks.map((v) => fmt(v, 0)) }],
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), tz || "UTC"),
      legend: { show: width >= 300 },
      cursor: { drag: { x: true, y: false } },
      ...(extra.bands ? { bands: extra.bands } : {}),
      ...(extra.hooks ? { hooks: extra.hooks } : {}),
    };
  }

  // Joins series of (epoch seconds, value) on one sorted time axis: uPlot's columns, null where absent.
  function align(seriesList) {
    const times = new Set();
    for (const s of seriesList) for (const t of s.ts) times.add(t);
    const x = [...times].sort((a, b) => a - b);
    const index = new Map(x.map((t, i) => [t, i]));
    const columns = seriesList.map((s) => {
      const col = new Array(x.length).fill(null);
      s.ts.forEach((t, i) => { const v = s.values[i]; col[index.get(t)] = Number.isFinite(v) ? v : null; });
      return col;
    });
    return [x, ...columns];
  }

  // ------------------------------------------------------------------------------------------ state

  const state = {
    regions: new Map(),       // region -> [zone status], from /v1/zones
    region: "",
    tz: "UTC",
    zones: [],                // the region's zones, in the service's order
    zoneStatus: new Map(),    // zone -> {last: epoch s, readings: count}
    watermark: null,          // the store's, when the readings were last read
    readings: new Map(),      // zone -> {ts: [epoch s], values: [MW]}; "TOTAL": their sum where all reported
    lastFullRead: 0,
    forecast: null,           // {id, source, issueTime, issuedAt, model, zones: Map name -> {ts, point, lo, hi, fallback}}
    forecastKey: "",          // newest archived forecast's id ("" none), to refetch only when it changes
    model: null,              // ModelInfo
    page: "overview",
    pageKeys: {},             // page -> the data key it was last drawn from (skip unchanged redraws)
    visible: new Set(),       // zone charts on screen (lazy drawing of many zones)
    dispatch: null,           // the last OptimizeDispatch answer and its sites
    overviewDrawn: false,
    failing: false,           // the last poll failed (its message is on every page)
  };

  // ------------------------------------------------------------------------------------------ polling

  let pollTimer = null;
  let polling = false;

  async function poll() {
    clearTimeout(pollTimer);
    if (polling) return;
    polling = true;
    try {
      await refreshCore();
      if (state.failing) {  // back after a failure: every page draws (and says) what it has anew
        state.failing = false;
        state.pageKeys = {};
        for (const page of PAGES) if (page !== "dispatch") setMessage(page, "");
      }
      await refreshPage(state.page);
      eo.lastUpdate = new Date().toISOString();
      setStatus(true, `Updated ${new Date().toLocaleTimeString("en-GB", { hour12: false })}`);
    } catch (err) {
      const text = failureText(err);
      recordError(text);
      setStatus(false, text);
      state.failing = true;
      for (const page of PAGES) if (page !== "dispatch") setMessage(page, text);
    } finally {
      polling = false;
      pollTimer = setTimeout(poll, POLL_MS);
    }
  }

  // What every page needs: the region's zones and watermark (each poll: one cheap call), the readings when
  // the watermark moved (only the hours since those held), the model once, the newest forecast's header.
  async function refreshCore() {
    const stale = Date.now() - state.lastFullRead > FULL_REFRESH_MS;
    const [zones, model] = await Promise.all([api("/v1/zones"), state.model && !stale ? state.model : api("/v1/model")]);
    state.model = model;
    applyZones(zones, model);
    if (!state.region) return;
    const watermark = String(zones.watermark || "0");
    const readingsChanged = watermark !== state.watermark || stale;
    const [, forecastChanged] = await Promise.all([
      readingsChanged ? readReadings(stale) : null,
      refreshForecast(readingsChanged),
    ]);
    state.watermark = watermark;
    if (readingsChanged || forecastChanged) state.pageKeys = {};
  }

  // The regions: those the store's zones are registered in (ListZones), then the server's named regions
  // (subsets of zones, in ModelInfo.regions only).
  function applyZones(answer, model) {
    const regions = new Map();
    const byZone = new Map();
    for (const z of answer.zones || []) {
      const region = (z.spec && z.spec.region) || "";
      if (!regions.has(region)) regions.set(region, []);
      regions.get(region).push(z);
      byZone.set(z.spec.zone, z);
    }
    for (const r of (model && model.regions) || []) {
      const zones = (r.zones || []).map((zone) => byZone.get(zone)).filter(Boolean);
      if (!regions.has(r.name) && zones.length) regions.set(r.name, zones);
    }
    state.regions = regions;
    if (!regions.size) {
      state.region = "";
      for (const page of PAGES) if (page !== "dispatch") setMessage(page, "No zones are registered in the service's store yet.");
      return;
    }
    const preferred = regions.has(answer.default_region) ? answer.default_region : regions.keys().next().value;
    const wanted = params.get("region") || state.region || preferred;
    fillRegionPicker(regions, wanted);
    if (!regions.has(wanted)) {
      const known = [...regions.keys()];
      state.region = "";
      throw new Problem(`Unknown region ${wanted}: this service has ${known.join(", ")} (pick one above).`);
    }
    const list = regions.get(wanted);
    const names = list.map((z) => z.spec.zone);
    if (wanted !== state.region || names.join() !== state.zones.join()) {
      resetRegion(wanted, names, (list[0].spec && list[0].spec.time_zone) || "UTC");
    }
    state.zoneStatus = new Map(list.map((z) => [z.spec.zone, {
      last: parseTime(z.last_reading), readings: num(z.readings) || 0 }]));
  }

  function resetRegion(region, zones, tz) {
    for (const name of Object.keys(eo.charts)) forget(name);
    Object.assign(state, { region, zones, tz, watermark: null, readings: new Map(), forecast: null,
                           forecastKey: "", pageKeys: {}, lastFullRead: 0, dispatch: null, overviewDrawn: false });
    state.visible.clear();
    $('[data-summary="dispatch"]').hidden = true;
    $('table[data-table="dispatch-sites"] tbody').textContent = "";
    $("#dispatch-site-picker").hidden = true;
    buildOverviewGrid();
    fillZonePicker();
  }

  async function readReadings(full) {
    // since the oldest of the zones' newest held hours (a zone with none in the window, e.g. in an outage,
    // does not hold the others back: its next reading is newer than that)
    const held = state.zones.map((z) => state.readings.get(z)).filter((r) => r && r.ts.length);
    const incremental = !full && held.length > 0;
    const since = incremental ? Math.min(...held.map((r) => r.ts[r.ts.length - 1])) : null;
    const answer = await api(query("/v1/readings", incremental
      ? { region: state.region, since: isoUtc(since) } : { region: state.region, hours: WINDOW_HOURS }));
    const merged = new Map();
    for (const zone of state.zones) {
      const values = new Map();
      const old = incremental && state.readings.get(zone);
      if (old) old.ts.forEach((t, i) => values.set(t, old.values[i]));
      merged.set(zone, values);
    }
    for (const [zone, r] of seriesOf(answer)) {
      const values = merged.get(zone);
      if (values) r.ts.forEach((t, i) => values.set(t, r.values[i]));
    }
    let newest = -Infinity;
    for (const values of merged.values()) for (const t of values.keys()) if (t > newest) newest = t;
    const from = newest - (WINDOW_HOURS - 1) * HOUR;
    const readings = new Map();
    for (const [zone, values] of merged) {
      const ts = [...values.keys()].filter((t) => t >= from).sort((a, b) => a - b);
      readings.set(zone, { ts, values: ts.map((t) => values.get(t)) });
    }
    readings.set("TOTAL", regionTotal(readings));
    state.readings = readings;
    if (!incremental) state.lastFullRead = Date.now();
  }

  function seriesOf(answer) {  // a ListReadings answer: zone -> {ts: [epoch s], values: [MW]}
    return new Map((answer.series || []).map((s) => [s.zone, {
      ts: (s.timestamps || []).map((t) => parseTime(t)), values: (s.values || []).map(num) }]));
  }

  function regionTotal(readings) {  // the sum of the zones' readings, at the hours every zone reported
    const sums = new Map();
    const counts = new Map();
    for (const zone of state.zones) {
      const r = readings.get(zone);
      r.ts.forEach((t, i) => {
        if (!Number.isFinite(r.values[i])) return;
        sums.set(t, (sums.get(t) || 0) + r.values[i]);
        counts.set(t, (counts.get(t) || 0) + 1);
      });
    }
    const ts = [...sums.keys()].filter((t) => counts.get(t) === state.zones.length).sort((a, b) => a - b);
    return { ts, values: ts.map((t) => sums.get(t)) };
  }

  function hasReadings() {
    return state.zones.some((z) => (state.readings.get(z) || { ts: [] }).ts.length > 0);
  }

  // The newest scheduled forecast of the archive (its header each poll; the values when it is new), or,
  // while the archive has none, an on-demand ForecastRegion whenever the readings moved. True if it changed.
  async function refreshForecast(readingsChanged) {
    const held = state.forecastKey !== "";  // none held yet: the values at once (one round trip less)
    const heads = await api(query("/v1/forecasts", { region: state.region, scheduled_only: true, limit: 1,
                                                     headers_only: held }));
    const head = (heads.forecasts || [])[0];
    if (head) {
      if (head.id === state.forecastKey) return false;
      let f = head;
      if (held) {
        const full = await api(query("/v1/forecasts", { region: state.region, scheduled_only: true, limit: 1,
                                                        issued_from: isoUtc(parseTime(head.issue_time, state.tz)) }));
        f = (full.forecasts || [])[0] || head;
      }
      state.forecast = forecastOf(f, "archive");
      state.forecastKey = head.id;
      return true;
    }
    if (!readingsChanged && state.forecast) return false;
    state.forecastKey = "";
    if (![...state.zoneStatus.values()].some((z) => Number.isFinite(z.last))) {  // nothing to forecast from
      const had = state.forecast !== null;
      state.forecast = null;
      return had;
    }
    const levels = (state.model.quantiles || []).map(Number);
    const wanted = [0.1, 0.5, 0.9].filter((q) => levels.some((l) => Math.abs(l - q) < 1e-6));
    const answer = await api(query("/v1/forecast/region", {
      region: state.region, horizon: Math.min(FORECAST_HOURS, num(state.model.max_horizon) || FORECAST_HOURS),
      quantiles: wanted.length === 3 ? wanted : [] }));
    state.forecast = forecastOf(answer, "on demand");
    return true;
  }

  function forecastOf(message, source) {
    const zones = new Map();
    for (const f of [...(message.zones || []), ...(message.total ? [message.total] : [])]) {
      const ts = (f.timestamps || []).map((t) => parseTime(t, state.tz));
      const bands = (f.quantiles || []).map((q) => ({ level: num(q.level), values: (q.values || []).map(num) }));
      const pick = (target, side) => {
        const exact = bands.find((b) => Math.abs(b.level - target) < 1e-6);
        if (exact) return exact;
        const onSide = bands.filter((b) => side < 0 ? b.level < 0.5 : b.level > 0.5);
        return onSide.sort((a, b) => side * (b.level - a.level))[0] || null;
      };
      zones.set(f.name, { ts, point: (f.point || []).map(num), lo: pick(0.1, -1), hi: pick(0.9, 1),
                          fallback: f.fallback || "" });
    }
    return { id: message.id || message.forecast_id || "", source, issueTime: parseTime(message.issue_time, state.tz),
             issuedAt: parseTime(message.issued_at), late: !!message.late, model: message.model || {}, zones };
  }

  // ------------------------------------------------------------------------------------------ navigation

  function showPage() {
    const name = (location.hash || "").replace(/^#/, "");
    state.page = PAGES.includes(name) ? name : "overview";
    for (const section of $$("section[data-page]")) section.hidden = section.dataset.page !== state.page;
    for (const link of $$("a[data-nav]")) {
      const active = link.dataset.nav === state.page;
      link.classList.toggle("active", active);
      if (active) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
    }
    if (state.region) {
      refreshPage(state.page).catch((err) => {
        const text = failureText(err);
        recordError(text);
        setMessage(state.page, text);
      });
    }
  }

  async function refreshPage(page) {
    if (!state.region) return;
    if (page === "overview") renderOverview();
    else if (page === "accuracy") await refreshAccuracy();
    else if (page === "anomalies") await refreshAnomalies();
    else if (page === "dispatch") renderDispatchIdle();
    else if (page === "model") await refreshModel();
  }

  function fillRegionPicker(regions, wanted) {
    const select = $("#region-select");
    const names = [...regions.keys()];
    if ([...select.options].map((o) => o.value).join() !== names.join()) {
      select.textContent = "";
      for (const r of names) select.append(el("option", { value: r, text: r }));
    }
    if (regions.has(wanted)) select.value = wanted;
  }

  function fillZonePicker() {
    const select = $("#accuracy-zone");
    select.textContent = "";
    for (const z of state.zones) select.append(el("option", { value: z, text: z }));
  }

  // ------------------------------------------------------------------------------------------ overview

  let lazyObserver = null;

  function buildOverviewGrid() {
    const grid = $("#overview-zones");
    grid.textContent = "";
    if (lazyObserver) lazyObserver.disconnect();
    const lazy = state.zones.length > EAGER_ZONES;
    lazyObserver = lazy ? new IntersectionObserver((entries) => {
      for (const entry of entries) {
        const zone = entry.target.dataset.zone;
        if (entry.isIntersecting) {
          state.visible.add(zone);
          if (state.page === "overview") drawZone(zone);
        } else {
          state.visible.delete(zone);
        }
      }
    }, { rootMargin: "300px" }) : null;
    for (const zone of state.zones) {
      const card = el("div", { class: "zone-card", "data-zone": zone },
                      el("div", { class: "zone-title" }, el("span", { text: zone }),
                         el("span", { class: "badge", hidden: true, text: "fallback" })),
                      el("div", { class: "chart", "data-chart": `overview-zone-${zone}`, hidden: true }),
                      el("div", { class: "zone-empty", hidden: true }));
      grid.append(card);
      if (lazy) lazyObserver.observe(card);
    }
  }

  function overviewSeries(name) {
    const r = state.readings.get(name) || { ts: [], values: [] };
    const f = state.forecast && state.forecast.zones.get(name);
    const series = [{ label: "readings", ts: r.ts, values: r.values, stroke: COLORS[0] }];
    if (f && f.ts.length) {
      series.push({ label: "forecast", ts: f.ts, values: f.point, stroke: COLORS[1] });
      if (f.lo && f.hi) {
        series.push({ label: `q${Math.round(f.lo.level * 100)}`, ts: f.ts, values: f.lo.values, stroke: BAND_FILL, band: true });
        series.push({ label: `q${Math.round(f.hi.level * 100)}`, ts: f.ts, values: f.hi.values, stroke: BAND_FILL, band: true });
      }
    }
    return series;
  }

  function drawSeries(node, name, series) {
    const data = align(series);
    const labels = series.map((s) => s.label);
    const bandAt = series.findIndex((s) => s.band);
    return draw(node, name, labels, data, (width, height) => timeOptions(width, height, series.map((s) => ({
      label: s.label, stroke: s.stroke, width: s.band ? 1 : 1.5, spanGaps: false,
      points: { show: false }, value: (u, v) => v === null ? "–" : fmt(v, 0),
    })), bandAt > 0 ? { bands: [{ series: [bandAt + 1, bandAt], fill: BAND_FILL }] } : {}));
  }

  function drawZone(zone) {
    const card = $(`.zone-card[data-zone="${CSS.escape(zone)}"]`);
    if (!card) return false;
    const node = $(".chart", card);
    const empty = $(".zone-empty", card);
    const f = state.forecast && state.forecast.zones.get(zone);
    $(".badge", card).hidden = !(f && f.fallback);
    $(".badge", card).title = f && f.fallback ? f.fallback : "";
    const series = overviewSeries(zone);
    if (series.every((s) => s.ts.length === 0)) {
      undraw(node);
      empty.hidden = false;
      empty.textContent = `No readings for ${zone} in the last 7 days of the region.`;
      return false;
    }
    empty.hidden = true;
    drawSeries(node, `overview-zone-${zone}`, series);
    return true;
  }

  function renderOverview() {
    const key = `${state.watermark}|${state.forecastKey}|${state.forecast ? state.forecast.issueTime : ""}`;
    renderFreshness();
    if (state.pageKeys.overview === key) return;
    state.pageKeys.overview = key;
    const total = $('[data-chart="overview-total"]');
    if (!hasReadings()) {
      undraw(total);
      for (const zone of state.zones) drawZone(zone);
      $("#overview-issue").textContent = "";
      setMessage("overview", `No readings for region ${state.region} yet.`);
      return;
    }
    setMessage("overview", "");
    $("#overview-total-title").textContent = `Region total: ${state.region} (${state.zones.length} zones)`;
    drawSeries(total, "overview-total", overviewSeries("TOTAL"));
    const lazy = state.zones.length > EAGER_ZONES;
    for (const zone of state.zones) if (!lazy || state.visible.has(zone)) drawZone(zone);
    const f = state.forecast;
    $("#overview-issue").textContent = f
      ? `forecast from ${formatTime(f.issueTime, state.tz)} (${state.tz}), ${f.source === "archive"
        ? `scheduled${f.late ? ", issued late" : ""}, issued ${formatTime(f.issuedAt)} UTC` : "on demand: the archive holds no scheduled forecast yet"}${
        f.model.name ? ` · ${f.model.name} ${f.model.version || ""}` : ""}`
      : "no forecast yet";
    if (!state.overviewDrawn) {
      state.overviewDrawn = true;
      requestAnimationFrame(() => { eo.timings.overviewData = Math.round(performance.now()); });
    }
  }

  function renderFreshness() {
    const body = $('table[data-table="freshness"] tbody');
    const lasts = [...state.zoneStatus.values()].map((s) => s.last).filter(Number.isFinite);
    const newest = lasts.length ? Math.max(...lasts) : NaN;
    const now = Date.now() / 1000;
    body.textContent = "";
    for (const zone of state.zones) {
      const status = state.zoneStatus.get(zone) || { last: NaN, readings: 0 };
      const f = state.forecast && state.forecast.zones.get(zone);
      const fallback = !!(f && f.fallback);
      body.append(row({ "data-zone": zone, "data-fallback": String(fallback), class: fallback ? "fallback" : "" }, [
        zone, formatTime(status.last), Number.isFinite(status.last) ? `${fmt((newest - status.last) / HOUR, 0)} h` : "no reading",
        formatAge(now - status.last), fmt(status.readings, 0),
        !f ? "–" : fallback ? `fallback: ${f.fallback}` : "model",
      ]));
    }
  }

  // ------------------------------------------------------------------------------------------ accuracy

  const archivedCache = new Map();  // `${id}|${zone}` -> {ts, point}: archived forecasts never change

  async function archivedForecast(head, zone) {
    const key = `${head.id}|${zone}`;
    if (!archivedCache.has(key)) {
      const issue = parseTime(head.issue_time, state.tz);
      const answer = await api(query("/v1/forecasts", { region: state.region, zone, scheduled_only: true, limit: 1,
                                                        issued_from: isoUtc(issue), issued_to: isoUtc(issue + 1) }));
      const f = (answer.forecasts || [])[0];
      const z = f && (zone === "TOTAL" ? f.total : (f.zones || []).find((x) => x.name === zone));
      archivedCache.set(key, { issue, ts: z ? (z.timestamps || []).map((t) => parseTime(t, state.tz)) : [],
                               point: z ? (z.point || []).map(num) : [] });
      if (archivedCache.size > 500) archivedCache.delete(archivedCache.keys().next().value);
    }
    return archivedCache.get(key);
  }

  // The newest forecast, then those issued at 00:00 UTC, newest first: a choice that stays put as forecasts
  // arrive (so the cache above holds), one a day, for any schedule that divides a day.
  function chooseForecasts(heads) {
    const chosen = heads.slice(0, 1);
    for (const h of heads.slice(1)) {
      if (chosen.length >= ACCURACY_FORECASTS) break;
      if (parseTime(h.issue_time, state.tz) % 86400 === 0) chosen.push(h);
    }
    return chosen;
  }

  async function refreshAccuracy() {
    const zone = $("#accuracy-zone").value || state.zones[0];
    const key = `${state.watermark}|${state.forecastKey}|${zone}`;
    if (state.pageKeys.accuracy === key) return;
    const total = state.readings.get("TOTAL") || { ts: [] };
    const newest = total.ts.length ? total.ts[total.ts.length - 1] : NaN;
    const from = Number.isFinite(newest) ? newest - WINDOW_HOURS * HOUR : NaN;
    const [accuracy, heads] = await Promise.all([
      api(query("/v1/forecasts/accuracy", { region: state.region, window_days: 7 })),
      api(query("/v1/forecasts", { region: state.region, scheduled_only: true, headers_only: true, limit: 1000,
                                   issued_from: Number.isFinite(from) ? isoUtc(from) : "" })),
    ]);
    const chosen = chooseForecasts(heads.forecasts || []);
    const [totals, zones] = await Promise.all([
      Promise.all(chosen.map((h) => archivedForecast(h, "TOTAL"))),
      Promise.all(chosen.map((h) => archivedForecast(h, zone))),
    ]);
    state.pageKeys.accuracy = key;
    const rows = accuracy.rows || [];
    const noForecasts = chosen.length === 0;
    setMessage("accuracy", !hasReadings() ? `No readings for region ${state.region} yet.`
      : noForecasts ? `No scheduled forecasts archived for region ${state.region} in the last 7 days of readings yet.`
        : rows.length === 0 ? "No archived forecast has been scored yet: live accuracy appears as readings arrive "
          + "for the forecast hours." : "");
    $("#accuracy-window").textContent = accuracy.window_start
      ? `live accuracy of the forecasts issued ${formatTime(parseTime(accuracy.window_start))} – `
        + `${formatTime(parseTime(accuracy.window_end))} UTC` : "";
    const overlay = (name, readings, forecasts, node) => {
      const series = [{ label: "readings", ts: readings.ts, values: readings.values, stroke: COLORS[0] }];
      forecasts.forEach((f, i) => {
        if (f.ts.length) series.push({ label: `issued ${formatTime(f.issue, state.tz)}`, ts: f.ts, values: f.point,
                                       stroke: COLORS[1 + (i % (COLORS.length - 1))] });
      });
      if (series.every((s) => s.ts.length === 0)) undraw(node);
      else drawSeries(node, name, series);
    };
    overlay("accuracy-TOTAL", total, totals, $('[data-chart="accuracy-TOTAL"]'));
    $("#accuracy-zone-title").textContent = zone;
    const slot = $("#accuracy-zone-slot");
    if (slot.dataset.chart && slot.dataset.chart !== `accuracy-${zone}`) undraw(slot);
    overlay(`accuracy-${zone}`, state.readings.get(zone) || { ts: [], values: [] }, zones, slot);
    renderBuckets(rows, zone);
  }

  function renderBuckets(rows, zone) {
    const buckets = [...new Map(rows.map((r) => [`${r.first_step}-${r.last_step}`,
                                                 [num(r.first_step), num(r.last_step)]])).values()]
      .sort((a, b) => a[0] - b[0]);
    const labels = buckets.map(([a, b]) => `${a}–${b} h`);
    const mape = (name) => buckets.map(([a, b]) => {
      const r = rows.find((x) => x.zone === name && num(x.first_step) === a && num(x.last_step) === b);
      return r ? num(r.mape) : null;
    });
    const metrics = (state.model && state.model.metrics) || {};
    const backtestMape = num(metrics.mape);
    const node = $('[data-chart="accuracy-buckets"]');
    const series = [{ label: "TOTAL MAPE %", values: mape("TOTAL"), color: COLORS[0], align: -1 },
                    { label: `${zone} MAPE %`, values: mape(zone), color: COLORS[2], align: 1 }];
    if (Number.isFinite(backtestMape)) series.push({ label: "backtest MAPE %", values: buckets.map(() => backtestMape),
                                                     color: COLORS[1], line: true });
    if (!buckets.length) undraw(node);
    else {
      const x = buckets.map((_, i) => i + 1);
      draw(node, "accuracy-buckets", series.map((s) => s.label), [x, ...series.map((s) => s.values)],
           (width, height) => ({
             width, height, legend: { show: width >= 300 },
             scales: { x: { time: false, range: () => [0.5, buckets.length + 0.5] }, y: { range: (u, lo, hi) => [0, hi * 1.15 || 1] } },
             axes: [{ splits: () => x, values: (u, splits) => splits.map((v) => labels[v - 1] || "") },
                    { label: "MAPE %", size: 50 }],
             series: [{}, ...series.map((s) => s.line
               ? { label: s.label, stroke: s.color, width: 1.5, dash: [6, 4], points: { show: false } }
               : { label: s.label, stroke: s.color, fill: s.color + "99", width: 1,
                   paths: uPlot.paths.bars({ size: [0.35, 80], align: s.align }), points: { show: false } })],
           }), { key: labels.join() });
    }
    const backtest = $('[data-summary="backtest"]');
    backtest.textContent = "";
    const keys = Object.keys(metrics).sort();
    if (!keys.length) backtest.append(el("p", { text: "The model bundle carries no backtest metrics." }));
    else {
      backtest.append(el("p", { text: `${state.model.name || "model"} ${state.model.version || ""}, from its bundle's metrics.json:` }));
      const list = el("dl");
      for (const k of keys) list.append(el("dt", { text: k }), el("dd", { text: fmt(num(metrics[k]), 3) }));
      backtest.append(list);
      if (Number.isFinite(num(metrics.mae))) backtest.dataset.mae = String(num(metrics.mae));
      if (Number.isFinite(backtestMape)) backtest.dataset.mape = String(backtestMape);
    }
    const body = $('table[data-table="accuracy"] tbody');
    body.textContent = "";
    for (const r of rows) {
      body.append(row({ "data-zone": r.zone }, [r.zone, `${r.first_step}–${r.last_step}`, fmt(num(r.forecasts), 0),
                                                  fmt(num(r.points), 0), fmt(num(r.mae), 1), fmt(num(r.mape), 2),
                                                  fmt(num(r.pinball), 1), fmt(num(r.bias), 1),
                                                  Number.isFinite(num(r.coverage_80)) ? `${fmt(num(r.coverage_80) * 100, 0)} %` : "–"]));
    }
  }

  // ------------------------------------------------------------------------------------------ anomalies

  const anomalySpans = new Map();  // chart name -> the event spans it shades

  function shadeSpans(u, spans) {  // behind the series: each event's hours, open ones darker
    const { ctx, bbox } = u;
    ctx.save();
    for (const s of spans) {
      const x0 = Math.max(bbox.left, u.valToPos(s.start, "x", true));
      const x1 = Math.min(bbox.left + bbox.width, u.valToPos(s.end, "x", true));
      ctx.fillStyle = s.open ? "rgba(214, 39, 40, 0.30)" : "rgba(255, 127, 14, 0.35)";
      ctx.fillRect(x0, bbox.top, Math.max(2, x1 - x0), bbox.height);
    }
    ctx.restore();
  }

  async function refreshAnomalies() {
    const answer = await api(query("/v1/anomalies/events", { region: state.region }));
    const events = answer.events || [];
    const key = `${state.watermark}|${JSON.stringify(events.map((e) => [e.id, e.end, e.open, e.updated_at]))}`;
    if (state.pageKeys.anomalies === key) return;
    state.pageKeys.anomalies = key;
    const body = $('table[data-table="anomalies"] tbody');
    body.textContent = "";
    for (const e of events) {
      const severity = num(e.severity);
      body.append(row({ "data-event-id": e.id, "data-zone": e.zone, "data-open": String(!!e.open),
                        class: e.open ? "open" : "" }, [
        e.zone, e.kind, formatTime(parseTime(e.start)), formatTime(parseTime(e.end)),
        e.kind === "detector" ? `${fmt(severity, 2)} × threshold` : `${fmt(severity, 0)} h`,
        e.detail || "", e.open ? "open" : "closed",
      ]));
    }
    setMessage("anomalies", events.length ? "" : `No anomaly events in region ${state.region}: the scans on `
      + "arrival have found none.");
    const grid = $("#anomaly-zones");
    const byZone = new Map();
    for (const e of events) {
      if (!byZone.has(e.zone)) byZone.set(e.zone, []);
      byZone.get(e.zone).push({ start: parseTime(e.start), end: parseTime(e.end) + HOUR, open: !!e.open });
    }
    // the zones' readings back to their oldest event (12 h before it), at least the week, at most ANOMALY_DAYS
    const lasts = [...state.zoneStatus.values()].map((z) => z.last).filter(Number.isFinite);
    const newest = lasts.length ? Math.max(...lasts) : NaN;
    const oldest = Math.min(...[...byZone.values()].flat().map((s) => s.start));
    const since = Math.max(Math.min(oldest - 12 * HOUR, newest - (WINDOW_HOURS - 1) * HOUR), newest - ANOMALY_DAYS * 86400);
    const readings = byZone.size && Number.isFinite(since)
      ? seriesOf(await api(query("/v1/readings", { region: state.region, zones: [...byZone.keys()], since: isoUtc(since) })))
      : new Map();
    for (const name of Object.keys(eo.charts)) {
      if (name.startsWith("anomaly-") && !byZone.has(name.slice(8))) forget(name);
    }
    anomalySpans.clear();
    grid.textContent = "";
    for (const [zone, spans] of byZone) {
      const node = el("div", { class: "chart", "data-chart": `anomaly-${zone}` });
      const empty = el("div", { class: "zone-empty", hidden: true });
      grid.append(el("div", { class: "zone-card", "data-zone": zone },
                      el("div", { class: "zone-title" }, el("span", { text: zone })), node, empty));
      const r = readings.get(zone) || { ts: [], values: [] };
      const first = r.ts[0];
      const last = r.ts[r.ts.length - 1];
      const drawn = r.ts.length ? spans.filter((s) => s.end > first && s.start <= last + HOUR) : [];
      if (!r.ts.length) {
        undraw(node);
        empty.hidden = false;
        empty.textContent = `No readings of ${zone} in the last ${ANOMALY_DAYS} days to mark its events on.`;
        continue;
      }
      anomalySpans.set(`anomaly-${zone}`, drawn);
      const series = [{ label: "readings", ts: r.ts, values: r.values, stroke: COLORS[0] }];
      draw(node, `anomaly-${zone}`, ["readings"], align(series), (width, height) => timeOptions(
        width, height, [{ label: "readings", stroke: COLORS[0], width: 1.5, points: { show: false } }],
        { hooks: { drawClear: [(u) => shadeSpans(u, anomalySpans.get(`anomaly-${zone}`) || [])] } }));
      node.dataset.marks = String(drawn.length);
    }
  }

  // ------------------------------------------------------------------------------------------ dispatch

  // Fleet CSV columns: DispatchSite's fields (dispatch.proto), one site per row; `export_price` is a flat
  // rate repeated over the horizon. Empty cells take the server's defaults.
  const SITE_NUMBERS = ["zone_share", "battery_kwh", "soc_min_kwh", "soc_initial_kwh", "soc_terminal_kwh",
                        "charge_kw", "discharge_kw", "charge_efficiency", "discharge_efficiency",
                        "degradation_cost", "demand_charge", "peak_floor_kw", "import_limit_kw", "export_limit_kw",
                        "flex_kwh_per_day", "flex_max_kw", "export_price"];
  const SITE_COLUMNS = ["name", "zone", ...SITE_NUMBERS];

  class FleetError extends Error {}

  function parseCsv(text) {  // RFC 4180: quoted cells, "" inside quotes, CRLF or LF
    const rows = [];
    let cells = [];
    let cell = "";
    let quoted = false;
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') { cell += '"'; i++; }
        else if (c === '"') quoted = false;
        else cell += c;
      } else if (c === '"' && cell === "") quoted = true;
      else if (c === ",") { cells.push(cell); cell = ""; }
      else if (c === "\n" || c === "\r") {
        if (c === "\r" && text[i + 1] === "\n") i++;
        cells.push(cell);
        rows.push(cells);
        cells = [];
        cell = "";
      } else cell += c;
    }
    if (quoted) throw new FleetError("a quoted cell is not closed");
    if (cell !== "" || cells.length) { cells.push(cell); rows.push(cells); }
    return rows.filter((r) => r.some((c) => c.trim() !== ""));
  }

  function fleetSites(text, source) {
    let rows;
    try { rows = parseCsv(text.replace(/^\uFEFF/, "")); } catch (err) { throw new FleetError(`${source}: ${err.message}`); }
    if (rows.length < 2) throw new FleetError(`${source}: needs a header row and at least one site row`);
    const header = rows[0].map((h) => h.trim());
    const unknown = header.filter((h) => !SITE_COLUMNS.includes(h));
    if (unknown.length) {
      throw new FleetError(`${source}, row 1: unknown column ${unknown.map((u) => `"${u}"`).join(", ")}; `
        + `the columns are ${SITE_COLUMNS.join(", ")}`);
    }
    for (const needed of ["name", "zone"]) {
      if (!header.includes(needed)) throw new FleetError(`${source}, row 1: the column "${needed}" is required`);
    }
    return rows.slice(1).map((cells, r) => {
      const line = r + 2;
      if (cells.length !== header.length) {
        throw new FleetError(`${source}, row ${line}: ${cells.length} cells, but the header has ${header.length}`);
      }
      const site = { row: line };
      header.forEach((column, c) => {
        const value = cells[c].trim();
        if (value === "") return;
        if (column === "name" || column === "zone") { site[column] = value; return; }
        const n = Number(value);
        if (!Number.isFinite(n)) throw new FleetError(`${source}, row ${line}, column ${column}: "${value}" is not a number`);
        site[column] = n;
      });
      if (!site.name) throw new FleetError(`${source}, row ${line}, column name: empty; every site needs a name`);
      if (!site.zone) throw new FleetError(`${source}, row ${line}, column zone: empty; every site follows a zone's forecast`);
      if (!state.zones.includes(site.zone)) {
        throw new FleetError(`${source}, row ${line}, column zone: "${site.zone}" is not a zone of region `
          + `${state.region} (${state.zones.join(", ")})`);
      }
      if (!Number.isFinite((state.zoneStatus.get(site.zone) || {}).last)) {
        throw new FleetError(`${source}, row ${line}, column zone: ${site.zone} has no readings yet to forecast from`);
      }
      return site;
    });
  }

  // The tariff (docs/dashboard.md): per kWh, by the hour of the region's wall clock: off-peak 22:00-07:00,
  // peak 16:00-21:00 on weekdays, shoulder otherwise; the three rates are the page's inputs.
  function tariff(epochS) {
    const rate = (id) => Number($(id).value);
    const p = wallParts(epochS, state.tz);
    const hour = +p.hour % 24;
    if (hour >= 22 || hour < 7) return rate("#tariff-offpeak");
    if (hour >= 16 && hour < 21 && !["Sat", "Sun"].includes(p.weekday)) return rate("#tariff-peak");
    return rate("#tariff-shoulder");
  }

  function checkInputs(hours) {
    const max = Math.min(168, num(state.model && state.model.max_horizon) || 168);
    if (!Number.isInteger(hours) || hours < 1 || hours > max) {
      throw new FleetError(`Hours: a whole number from 1 to ${max} (the model's horizon), got "${$("#dispatch-hours").value}"`);
    }
    for (const id of ["#tariff-offpeak", "#tariff-shoulder", "#tariff-peak"]) {
      const v = $(id).value;
      if (v === "" || !Number.isFinite(Number(v)) || Number(v) < 0) {
        throw new FleetError(`Tariff: the ${id.slice(8)} rate must be a price of 0 or more, got "${v}"`);
      }
    }
  }

  async function optimize() {
    const button = $('[data-action="optimize"]');
    button.disabled = true;
    setMessage("dispatch", "Optimizing…");
    try {
      if (!state.region) throw new FleetError("The dashboard has not reached the service yet; try again shortly.");
      const hours = Number($("#dispatch-hours").value);
      checkInputs(hours);
      const file = $('[data-input="fleet-csv"]').files[0];
      let text;
      let source;
      if (file) {
        text = await file.text();
        source = file.name;
      } else {
        const response = await fetch("/dashboard/fleet-example.csv");
        if (!response.ok) throw new ApiFailure("/dashboard/fleet-example.csv", response.status, "", response.statusText);
        text = await response.text();
        source = "fleet-example.csv (bundled example)";
      }
      const rows = fleetSites(text, source);
      // a zone's forecast starts the hour after its latest reading (serving/dispatch.py): price those hours
      const sites = rows.map((s) => {
        const start = (state.zoneStatus.get(s.zone) || {}).last + HOUR;
        const site = { name: s.name, zone: s.zone,
                       import_price: Array.from({ length: hours }, (_, i) => tariff(start + i * HOUR)) };
        for (const f of SITE_NUMBERS) if (f in s && f !== "export_price") site[f] = s[f];
        if ("export_price" in s) site.export_price = new Array(hours).fill(s.export_price);
        return site;
      });
      let answer;
      try {
        answer = await api("/v1/dispatch", { method: "POST", headers: { "content-type": "application/json" },
                                             body: JSON.stringify({ sites, step_minutes: 60 }) });
      } catch (err) {
        if (err instanceof ApiFailure && !err.unreachable) {  // name the CSV row of the site the server names
          const byName = new Map(rows.map((r) => [r.name, r]));
          const detail = err.detail
            .replace(/sites\[(\d+)\]/g, (m, i) => rows[+i] ? `${m} (${source} row ${rows[+i].row}, site "${rows[+i].name}")` : m)
            .replace(/site '([^']*)'/g, (m, name) => byName.has(name) ? `${m}, ${source} row ${byName.get(name).row}` : m);
          throw new FleetError(`The server refused the fleet: ${detail}`);
        }
        throw err;
      }
      state.dispatch = { answer, rows, sites, source,
                         start: sites.map((s) => (state.zoneStatus.get(s.zone) || {}).last + HOUR) };
      renderDispatch();
      setMessage("dispatch", "");
    } catch (err) {
      const text = err instanceof FleetError ? err.message : failureText(err);
      recordError(text);
      setMessage("dispatch", text);
    } finally {
      button.disabled = false;
    }
  }

  function renderDispatchIdle() {  // before the first run: what to do (an error stays until the next run)
    if (state.dispatch) return;
    if ($('[data-message="dispatch"]').hidden) {
      setMessage("dispatch", "Upload a site fleet CSV, or press Optimize to schedule the bundled example fleet.");
    }
    undraw($('[data-chart="dispatch-schedule"]'));
  }

  function renderDispatch() {
    const { answer, rows, start } = state.dispatch;
    const sites = answer.sites || [];
    const optimal = sites.filter((s) => s.status === "optimal");
    const sum = (field) => optimal.reduce((a, s) => a + (num(s[field]) || 0), 0);
    const summary = $('[data-summary="dispatch"]');
    const cost = num(answer.total_cost) || 0;
    const without = num(answer.total_cost_without_battery) || 0;
    const peak = sum("peak_kw");
    const peakWithout = sum("peak_without_battery_kw");
    Object.assign(summary.dataset, { cost: String(cost), costWithout: String(without), peak: String(peak),
                                     peakWithout: String(peakWithout) });
    const saving = without ? ` (${fmt((without - cost) / Math.abs(without) * 100, 1)} % saved)` : "";
    summary.textContent = `${optimal.length} of ${sites.length} sites scheduled, solved in `
      + `${fmt(num(answer.solve_seconds), 2)} s. Cost ${fmt(cost, 2)} with the batteries, ${fmt(without, 2)} without${saving}; `
      + `peak ${fmt(peak, 0)} kW with, ${fmt(peakWithout, 0)} kW without (sum of the sites' peaks).`;
    summary.hidden = false;
    const body = $('table[data-table="dispatch-sites"] tbody');
    body.textContent = "";
    sites.forEach((s, i) => {
      body.append(row({ "data-site": s.name, "data-status": s.status }, [
        s.name, rows[i] ? rows[i].zone : "", s.status === "optimal" ? "optimal" : `${s.status}: ${s.reason || ""}`,
        fmt(num(s.cost), 2), fmt(num(s.cost_without_battery), 2), fmt(num(s.peak_kw), 0),
        fmt(num(s.peak_without_battery_kw), 0)]));
    });
    const picker = $("#dispatch-site");
    picker.textContent = "";
    sites.forEach((s, i) => picker.append(el("option", { value: String(i), text: s.name })));
    $("#dispatch-site-picker").hidden = sites.length < 2;
    drawDispatchSite(0, start);
  }

  function drawDispatchSite(index, start) {
    const node = $('[data-chart="dispatch-schedule"]');
    const s = (state.dispatch.answer.sites || [])[index];
    if (!s || s.status !== "optimal") {
      undraw(node);
      if (s) setMessage("dispatch", `${s.name}: no schedule (${s.status}${s.reason ? ": " + s.reason : ""}).`);
      return;
    }
    const n = (s.load_kw || []).length;
    const x = Array.from({ length: n }, (_, i) => start[index] + i * HOUR);
    const price = state.dispatch.sites[index].import_price;
    const col = (v) => (v || []).map(num);
    const series = [
      { label: "load kW", values: col(s.load_kw), stroke: COLORS[0], scale: "kW" },
      { label: "import kW", values: col(s.import_kw), stroke: COLORS[3], scale: "kW" },
      { label: "charge kW", values: col(s.charge_kw), stroke: COLORS[2], scale: "kW" },
      { label: "discharge kW", values: col(s.discharge_kw), stroke: COLORS[1], scale: "kW" },
      { label: "SoC kWh", values: col(s.soc_kwh), stroke: COLORS[4], scale: "kWh" },
      { label: "price", values: price, stroke: "#777", scale: "price", step: true },
    ];
    draw(node, "dispatch-schedule", series.map((v) => v.label), [x, ...series.map((v) => v.values)],
         (width, height) => timeOptions(width, height, series.map((v) => ({
           label: v.label, stroke: v.stroke, scale: v.scale, width: 1.5, points: { show: false },
           ...(v.step ? { paths: uPlot.paths.stepped({ align: 1 }), dash: [4, 3] } : {}),
           value: (u, val) => val === null ? "–" : fmt(val, v.scale === "price" ? 3 : 0),
         })), { scales: { kW: {}, kWh: {}, price: { range: (u, lo, hi) => [0, hi * 1.1 || 1] } },
                axes: [timeAxis(), { ...timeAxis(), scale: "kW", label: "kW", size: 60 },
                       { scale: "kWh", side: 1, label: "SoC kWh", size: 60, grid: { show: false } },
                       // on a phone the price stays in the legend only: three axes leave no room to plot
                       ...(width >= 500 ? [{ scale: "price", side: 1, label: "price / kWh", size: 50,
                                             grid: { show: false } }] : [])] }));
  }

  // ------------------------------------------------------------------------------------------ model

  async function refreshModel() {
    const [model, decisions] = await Promise.all([api("/v1/model"), api(query("/v1/model/decisions", { limit: 20 }))]);
    state.model = model;
    const kv = $('table[data-table="model"] tbody');
    kv.textContent = "";
    const stats = model.stats || {};
    const requests = num(stats.requests) || 0;
    const batches = num(stats.batches) || 0;
    const regions = (model.regions || []).map((r) => `${r.name}: ${(r.zones || []).length} zones `
      + `(${(r.zones || []).join(", ")}), history to ${r.history_end || "–"}`).join("; ");
    const metrics = Object.entries(model.metrics || {}).sort().map(([k, v]) => `${k} ${fmt(num(v), 3)}`).join(", ");
    const entries = [
      ["name", model.name], ["version", model.version], ["type", model.type],
      ["training data fingerprint", model.data_fingerprint || "not recorded in the bundle"],
      ["input length", `${model.input_length || 0} h`], ["max horizon", `${model.max_horizon || 0} h`],
      ["quantiles", (model.quantiles || []).join(", ")], ["covariates", (model.covariates || []).join(", ") || "none"],
      ["region context zones", (model.region_zones || []).join(", ") || "none"],
      ["regions served", regions], ["backtest metrics", metrics || "none in the bundle"],
      ["bundle", model.bundle_path], ["last swap error", model.swap_error || "none"],
      ["replica", stats.replica], ["loaded at (UTC)", stats.loaded_at],
      ["requests", fmt(requests, 0)], ["forward passes", fmt(batches, 0)],
      ["mean batch (requests)", batches ? fmt(requests / batches, 2) : "–"],
      ["series forecast / computed", `${fmt(num(stats.series) || 0, 0)} / ${fmt(num(stats.computed_series) || 0, 0)}`],
      ["largest batch (requests)", fmt(num(stats.max_batch_requests) || 0, 0)],
      ["batch limit (series) / wait", `${stats.max_batch_series || "–"} / ${fmt(num(stats.batch_wait_timeout_s) * 1000, 1)} ms`],
    ];
    for (const [k, v] of entries) kv.append(el("tr", { "data-key": k }, el("th", { text: k }), el("td", { text: v ?? "" })));
    const body = $('table[data-table="decisions"] tbody');
    body.textContent = "";
    const list = decisions.decisions || [];
    for (const d of list) {
      const ref = (m) => m ? `${m.name || ""} ${m.version || ""}`.trim() : "";
      body.append(row({ "data-promoted": String(!!d.promoted), class: d.promoted ? "promoted" : "" }, [
        formatTime(parseTime(d.decided_at)), ref(d.champion), ref(d.challenger), d.metric || "",
        fmt(num(d.champion_score), 3), fmt(num(d.challenger_score), 3), fmt(num(d.margin), 3),
        d.promoted ? "yes" : "no",
        d.backtest_start ? `${formatTime(parseTime(d.backtest_start))} – ${formatTime(parseTime(d.backtest_end))}` : "–"]));
    }
    if (!list.length) {
      body.append(el("tr", { class: "none" }, el("td", { colspan: 9, class: "wrap",
                                                       text: "No champion/challenger decisions yet (energyopt retrain records them)." })));
    }
    setMessage("model", "");
  }

  // ------------------------------------------------------------------------------------------ start

  function start() {
    if (notices.length) {
      $("#notice").textContent = notices.join(" ");
      $("#notice").hidden = false;
    }
    window.addEventListener("hashchange", showPage);
    $("#region-select").addEventListener("change", (event) => {
      params.set("region", event.target.value);
      history.replaceState(null, "", `${location.pathname}?${params}${location.hash}`);
      poll();
    });
    $("#api-key").value = apiKey();
    $("#api-key").addEventListener("change", (event) => {
      try { sessionStorage.setItem(KEY_STORAGE, event.target.value.trim()); } catch { /* storage off: no key */ }
      poll();
    });
    $("#accuracy-zone").addEventListener("change", () => showPage());
    $('[data-action="optimize"]').addEventListener("click", optimize);
    $("#dispatch-site").addEventListener("change", (event) => {
      if (state.dispatch) drawDispatchSite(Number(event.target.value), state.dispatch.start);
    });
    showPage();
    poll();
  }

  if (typeof uPlot === "undefined") {
    const text = "The chart library (/dashboard/vendor/uPlot.iife.min.js) did not load; reload the page.";
    recordError(text);
    document.addEventListener("DOMContentLoaded", () => setStatus(false, text));
    return;
  }
  start();
})();
