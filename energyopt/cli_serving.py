"""`energyopt serve` and `energyopt forecast --server`: the service and its client on the command line.

Plain functions with typer annotations, registered on the app in `energyopt/cli.py`:

    app.command("serve")(cli_serving.serve)
    # `energyopt forecast --server HOST:PORT ...` calls cli_serving.remote_forecast(...)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)

DEFAULT_MODEL = Path("runs/demo/model")


def api_key_option() -> str | None:
    """`--api-key` of the commands that call the service (default $ENERGYOPT_API_KEY)."""
    return typer.Option(None, "--api-key", envvar="ENERGYOPT_API_KEY", show_envvar=False,
                        help="API key for the service (default: $ENERGYOPT_API_KEY).")


def ca_option() -> Path | None:
    """`--ca` of the commands that call the service (default $ENERGYOPT_CA)."""
    return typer.Option(None, "--ca", envvar="ENERGYOPT_CA", show_envvar=False,
                        help="CA certificate (PEM) of a TLS server: connect with TLS verified against it "
                             "(default: $ENERGYOPT_CA; none: plaintext).")


def client_cert_option() -> Path | None:
    """`--client-cert` of the commands that call the service (default $ENERGYOPT_CLIENT_CERT)."""
    return typer.Option(None, "--client-cert", envvar="ENERGYOPT_CLIENT_CERT", show_envvar=False,
                        help="Client certificate (PEM) for a server that requires one (mTLS; with --client-key; "
                             "default: $ENERGYOPT_CLIENT_CERT).")


def client_key_option() -> Path | None:
    """`--client-key` of the commands that call the service (default $ENERGYOPT_CLIENT_KEY)."""
    return typer.Option(None, "--client-key", envvar="ENERGYOPT_CLIENT_KEY", show_envvar=False,
                        help="Private key (PEM) of --client-cert (default: $ENERGYOPT_CLIENT_KEY).")


def tls_files(ca: Path | None, cert: Path | None, key: Path | None) -> dict[str, Path | None]:
    """The client classes' TLS arguments from the options above."""
    return {"ca": ca, "cert": cert, "key": key}


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def serve(
    model: Path | None = typer.Option(None, help="Model bundle directory (default: runs/demo/model, "
                                                    "written by `energyopt demo`)."),
    host: str | None = typer.Option(None, help="Address the gRPC and HTTP APIs and the local Ray bind to "
                                               "(default: the config's http_options.host, 127.0.0.1 as shipped; "
                                               "0.0.0.0: every interface, needs --api-keys; docs/resilience.md)."),
    grpc_port: int = typer.Option(9000, help="Port of the gRPC API."),
    http_port: int = typer.Option(8000, help="Port of the HTTP/JSON API."),
    metrics_port: int = typer.Option(8080, help="Ray's metrics export port: Ray's, Serve's and the "
                                                "application's metrics for Prometheus (docs/monitoring.md)."),
    config: Path | None = typer.Option(None, help="Ray Serve config file (default: configs/serve.yaml)."),
    data: Path | None = typer.Option(None, help="Long-format CSV/Parquet seeded into the store once "
                                                   "(default: the bundled PJM zones)."),
    store: str | None = typer.Option(None, help="The store: a SQLite file, or a database URL such as "
                                                "postgresql://user@host/db (default: runs/store.db, created)."),
    seed_until: str | None = typer.Option(None, help="Seed only the readings before this time, e.g. "
                                                     "2018-07-01 (feed the rest with `energyopt replay`)."),
    time_zone: str | None = typer.Option(None, help="Time zone of the seeded zones' naive timestamps "
                                                    "(default: America/New_York for the bundled PJM data, else UTC)."),
    replicas: int | None = typer.Option(None, help="Fixed number of replicas (default: autoscaling as "
                                                      "in the config)."),
    haproxy: bool = typer.Option(True, help="Ray Serve's high-throughput ingress (HAProxy in front of the "
                                            "replicas); --no-haproxy uses Serve's Python proxies."),
    anomaly_model: Path | None = typer.Option(None, help="Anomaly detector bundle for DetectAnomalies "
                                                            "(`energyopt train --model autoencoder`; default: "
                                                            "the config's, if any)."),
    api_keys: Path | None = typer.Option(None, "--api-keys", help="API key file (`energyopt keys create`): "
                                                                  "calls need a key (default: the config's "
                                                                  "args.api_keys; none: only on loopback)."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="Server certificate (PEM, its chain after it): "
                                                                  "HTTPS and gRPC over TLS, with --tls-key "
                                                                  "(default: the config's http_options.ssl_certfile)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="Private key (PEM, unencrypted) of --tls-cert."),
    tls_client_ca: Path | None = typer.Option(None, "--tls-client-ca", help="CA certificate(s) (PEM): clients must "
                                                                            "present a certificate it signed (mTLS)."),
) -> None:
    """Serve forecasts over gRPC and HTTP (Ray Serve, local Ray) in the foreground; Ctrl-C stops it."""
    from models.bundle import BundleError, load_bundle

    model_dir = model or DEFAULT_MODEL
    try:
        bundle = load_bundle(model_dir)
    except BundleError as err:
        hint = (" Run `energyopt demo` first (it trains one there), or pass --model DIR."
                if model is None else "")
        _fail(f"{err}.{hint}")
    if anomaly_model is not None:
        try:
            detector = load_bundle(anomaly_model)
        except BundleError as err:
            _fail(f"--anomaly-model: {err}")
        if detector.kind != "autoencoder":
            _fail(f"--anomaly-model {anomaly_model} is a {detector.kind} bundle; DetectAnomalies needs one "
                  "written by `energyopt train --model autoencoder`")
    if data is not None and not data.exists():
        _fail(f"no data file {data}")
    for name, port in (("--grpc-port", grpc_port), ("--http-port", http_port), ("--metrics-port", metrics_port)):
        if _in_use(port):
            _fail(f"port {port} is in use (another `energyopt serve`?); pick a free one with {name}")

    import signal
    import time

    from serving import server

    try:
        extra = {k: v for k, v in (("seed_until", seed_until), ("time_zone", time_zone),
                                   ("api_keys", api_keys and str(api_keys))) if v is not None}
        cfg = server.load_config(config, model=model_dir, anomaly_model=anomaly_model, data=data, store=store,
                                 grpc_port=grpc_port, http_port=http_port, replicas=replicas, args=extra,
                                 host=host, tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca)
        tls = server.check_tls(cfg.get("http_options") or {})  # files that read, a key that fits: else ValueError
        from serving.auth import startup_check

        auth_line = startup_check(cfg)  # AuthError (a ValueError): no keys beyond loopback, an unreadable file
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    console.print(f"starting Ray Serve with model [bold]{bundle.name}[/] {bundle.version} ({model_dir}) ...")
    from models.series import SeriesError
    from models.store import StoreError

    try:
        server.start(cfg, haproxy=haproxy, metrics_port=metrics_port,
                     log=lambda line: console.print(line, highlight=False))
    except (StoreError, SeriesError) as err:
        _fail(f"the store: {err}")
    except (RuntimeError, TimeoutError, ValueError) as err:  # ValueError: a config Serve cannot run (TLS)
        _fail(f"the service did not start: {err}")
    http_host = cfg.get("http_options", {}).get("host", "127.0.0.1")
    scheme = "https" if tls else "http"  # docs/security.md
    tls_line = ("TLS on HTTP and gRPC" + (", client certificates required (mTLS)"
                                          if cfg["http_options"].get("ssl_ca_certs") else "")
                if tls else "TLS off (plaintext HTTP and gRPC)")
    console.print(
        f"[bold green]serving[/] {bundle.name} {bundle.version}\n"
        f"  gRPC  {http_host}:{grpc_port}   energyopt.v1.ForecastService, ReadingsService, grpc.health.v1.Health "
        "(reflection on)\n"
        f"  dashboard  {scheme}://{http_host}:{http_port}/\n"
        f"  HTTP  {scheme}://{http_host}:{http_port}   /v1/forecast/region  /v1/readings  /v1/zones  /v1/model  "
        "/healthz  /docs\n"
        f"  metrics http://127.0.0.1:{server.metrics_export_port() or metrics_port}/metrics   Prometheus scrape "
        "(Ray's node metrics export: ray_energyopt_*, ray_serve_*)\n"
        f"  store {cfg['applications'][0]['args']['store']}\n"
        f"  {auth_line}\n"
        f"  {tls_line}\n"
        f"try:  energyopt forecast --server localhost:{grpc_port} --region PJM --horizon 48"
        f"{' --api-key KEY' if auth_line.startswith('authentication: on') else ''}"
        f"{' --ca CA.pem' if tls else ''}"
        f"{' --client-cert CERT --client-key KEY' if tls and cfg['http_options'].get('ssl_ca_certs') else ''}\n"
        "Ctrl-C to stop", highlight=False)
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    try:
        while not stop:
            time.sleep(0.2)
    finally:
        console.print("stopping (replicas finish their requests first) ...")
        server.shutdown()


def _in_use(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def remote_forecast(
    server: str = typer.Option("localhost:9000", help="HOST:PORT of the gRPC API (`energyopt serve`)."),
    region: str = typer.Option("PJM", help="Region to forecast."),
    horizon: int = typer.Option(48, help="Hours ahead."),
    zones: list[str] | None = typer.Option(None, "--zone", help="Only these zones (repeatable)."),
    archive: bool = typer.Option(False, "--archive", help="Store the forecast in the server's archive."),
    as_json: bool = typer.Option(False, "--json", help="Print the response as JSON."),
    timeout: float = typer.Option(30.0, help="Seconds to wait for the answer (retries included)."),
    api_key: str | None = api_key_option(),
    ca: Path | None = ca_option(),
    client_cert: Path | None = client_cert_option(),
    client_key: Path | None = client_key_option(),
) -> None:
    """Ask a running server for a region forecast and print it (a table, or JSON)."""
    response = _ask(server, timeout, api_key, tls_files(ca, client_cert, client_key),
                    lambda c: c.forecast_region(region, horizon, zones=zones or (), archive=archive))
    if _printed_json(response, as_json):
        return
    print_region(response)
    if response.forecast_id:
        console.print(f"archived as {response.forecast_id}", highlight=False)


def _ask(server: str, timeout: float, api_key: str | None, tls: dict[str, Path | None], call: Any) -> Any:
    """`call(client)` on a ForecastClient of `server` (`tls`: `tls_files`); a failure ends the command naming
    the status."""
    from serving.client import ForecastClient, ForecastError

    try:
        client = ForecastClient(server, timeout=timeout, token=api_key, **tls)
    except (OSError, ValueError) as err:  # the --ca, --client-cert, --client-key files
        _fail(f"TLS files: {err}")
    try:
        with client:
            return call(client)
    except ForecastError as err:
        hint = (f" Is the server running (`energyopt serve`) and listening on {server}?"
                if err.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED") else auth_hint(err.code.name))
        _fail(f"{err.code.name}: {err.message}.{hint}")


def auth_hint(code: str) -> str:
    """What to do about a refused key (a status code's name), '' for other codes."""
    return {"UNAUTHENTICATED": " Pass a key with --api-key (or set ENERGYOPT_API_KEY); `energyopt keys create` "
                               "makes one.",
            "PERMISSION_DENIED": " Use a key with that role (`energyopt keys create --role ...`)."}.get(code, "")


def _printed_json(message: Any, as_json: bool) -> bool:
    if as_json:
        from google.protobuf import json_format

        print(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), indent=1))
    return as_json


def forecasts(
    server: str = typer.Option("localhost:9000", help="HOST:PORT of the gRPC API (`energyopt serve`)."),
    region: str = typer.Option("PJM", help="Region whose archive to list."),
    zone: str = typer.Option("", help="Only this zone's values (TOTAL: the region total)."),
    issued_from: str = typer.Option("", "--from", help="Issue times from (ISO 8601; no offset: UTC)."),
    issued_to: str = typer.Option("", "--to", help="Issue times before (ISO 8601; no offset: UTC)."),
    scheduled_only: bool = typer.Option(False, "--scheduled", help="Only the scheduled forecasts."),
    limit: int = typer.Option(20, min=1, max=1000, help="Most forecasts, the newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print the response (with every value) as JSON."),
    timeout: float = typer.Option(30.0, help="Seconds to wait for the answer (retries included)."),
    api_key: str | None = api_key_option(),
    ca: Path | None = ca_option(),
    client_cert: Path | None = client_cert_option(),
    client_key: Path | None = client_key_option(),
) -> None:
    """List the forecasts the server issued (its archive): issue time, slot, model, late or not."""
    response = _ask(server, timeout, api_key, tls_files(ca, client_cert, client_key), lambda c: c.list_forecasts(
        region, zone=zone, issued_from=issued_from, issued_to=issued_to, scheduled_only=scheduled_only,
        limit=limit, headers_only=not as_json))
    if _printed_json(response, as_json):
        return
    table = Table(title=f"{region}: {len(response.forecasts)} archived forecasts, newest first")
    for column in ("id", "issue time", "issued at (UTC)", "kind", "model", "horizon", "fallbacks"):
        table.add_column(column)
    for f in response.forecasts:
        kind = ("scheduled, late" if f.late else "scheduled") if f.scheduled else "on demand"
        table.add_row(f.id, f.issue_time, f.issued_at[:19].replace("T", " "), kind,
                      f"{f.model.name} {f.model.version}", str(f.horizon), str(f.fallback_zones))
    console.print(table)


def accuracy(
    server: str = typer.Option("localhost:9000", help="HOST:PORT of the gRPC API (`energyopt serve`)."),
    region: str = typer.Option("PJM", help="Region whose issued forecasts to score."),
    zone: str = typer.Option("", help="Only this zone (TOTAL: the region total)."),
    days: int = typer.Option(7, min=1, max=366, help="Forecasts issued in this many days before --until."),
    buckets: str = typer.Option("6,24,48", help="Last step of each horizon bucket, comma-separated."),
    until: str = typer.Option("", help="End of the window (ISO 8601; no offset: UTC); default the latest reading."),
    on_demand: bool = typer.Option(False, "--on-demand", help="Score on-demand forecasts too."),
    as_json: bool = typer.Option(False, "--json", help="Print the response as JSON."),
    timeout: float = typer.Option(60.0, help="Seconds to wait for the answer (retries included)."),
    api_key: str | None = api_key_option(),
    ca: Path | None = ca_option(),
    client_cert: Path | None = client_cert_option(),
    client_key: Path | None = client_key_option(),
) -> None:
    """Live accuracy of the forecasts the server issued, against the readings that arrived since."""
    try:
        ends = [int(b) for b in buckets.split(",") if b.strip()]
    except ValueError:
        _fail(f"--buckets: {buckets!r} is not a comma-separated list of steps, e.g. 6,24,48")
    response = _ask(server, timeout, api_key, tls_files(ca, client_cert, client_key), lambda c: c.forecast_accuracy(
        region, zone=zone, window_days=days, bucket_ends=ends, until=until, include_on_demand=on_demand))
    if _printed_json(response, as_json):
        return
    table = Table(title=f"{region}: accuracy of the forecasts issued {response.window_start[:16]} .. "
                        f"{response.window_end[:16]} (UTC)")
    for column in ("zone", "steps", "forecasts", "points", "MAE", "MAPE %", "pinball", "bias", "80% cover"):
        table.add_column(column, justify="left" if column == "zone" else "right")
    for r in response.rows:
        table.add_row(r.zone, f"{r.first_step}-{r.last_step}", f"{r.forecasts:,}", f"{r.points:,}", f"{r.mae:,.1f}",
                      f"{r.mape:.2f}", f"{r.pinball:,.1f}", f"{r.bias:+,.1f}", f"{r.coverage_80:.1%}")
    console.print(table)
    if not response.rows:
        console.print("no issued forecast of the window has a reading to score yet", highlight=False)


def print_region(response) -> None:  # noqa: ANN001  (a ForecastRegionResponse)
    """The forecast as a table: every third hour, each zone, the total and its outer band."""
    total = response.total
    bands = list(total.quantiles)
    lo, hi = (bands[0], bands[-1]) if bands else (None, None)
    band_title = f", {lo.level:g}-{hi.level:g} band for the total" if lo else ""
    table = Table(title=f"{response.region} load forecast (MW) from {response.issue_time}{band_title}\n"
                        f"model {response.model.name} {response.model.version}")
    table.add_column("hour")
    for z in response.zones:
        table.add_column(z.name + (" *" if z.fallback else ""), justify="right")
    table.add_column(total.name, justify="right", style="bold")
    if lo:
        table.add_column("band", justify="right")
    n = len(total.timestamps)
    for i, ts in enumerate(total.timestamps):
        if i % 3 and i != n - 1:
            continue
        cells = [ts[5:16].replace("T", " "), *[f"{z.point[i]:,.0f}" if len(z.point) else "-" for z in response.zones],
                 f"{total.point[i]:,.0f}"]
        if lo:
            cells.append(f"{lo.values[i]:,.0f}-{hi.values[i]:,.0f}")
        table.add_row(*cells)
    console.print(table)
    for z in response.zones:
        if z.fallback:
            console.print(f"* {z.name}: fallback forecast ({z.fallback})", highlight=False)
    latest = [z.last_reading for z in response.zones if z.last_reading]
    if latest:
        console.print(f"latest reading {max(latest)}, store watermark {response.watermark}", highlight=False)


def anomalies(
    server: str = typer.Option("localhost:9000", help="HOST:PORT of the gRPC API (`energyopt serve`)."),
    region: str = typer.Option(..., help="Region whose anomaly events to list."),
    zone: str = typer.Option("", help="Only this zone's events."),
    since: str = typer.Option("", help="Only events still open or seen at or after this time (ISO 8601; "
                                       "no offset: UTC)."),
    open_only: bool = typer.Option(False, "--open-only", help="Only events still open."),
    limit: int = typer.Option(100, min=1, max=1000, help="Most events, the most recently seen first."),
    as_json: bool = typer.Option(False, "--json", help="Print the response as JSON."),
    timeout: float = typer.Option(30.0, help="Seconds to wait for the answer (retries included)."),
    api_key: str | None = api_key_option(),
    ca: Path | None = ca_option(),
    client_cert: Path | None = client_cert_option(),
    client_key: Path | None = client_key_option(),
) -> None:
    """List the anomaly events the server's scans on arrival stored (stuck meters, zero readings, the
    detector's events), the most recently seen first."""
    response = _ask(server, timeout, api_key, tls_files(ca, client_cert, client_key), lambda c: c.list_anomalies(
        region, zone=zone, since=since, open_only=open_only, limit=limit))
    if _printed_json(response, as_json):
        return
    table = Table(title=f"{region}: {len(response.events)} anomaly event(s), the most recently seen first")
    for column in ("zone", "kind", "start (UTC)", "end (UTC)", "state", "severity", "detail", "id"):
        table.add_column(column, justify="right" if column == "severity" else "left")
    for e in response.events:
        table.add_row(e.zone, e.kind, e.start[:16].replace("T", " "), e.end[:16].replace("T", " "),
                      "open" if e.open else "closed", f"{e.severity:.2f}", e.detail, e.id)
    console.print(table)
