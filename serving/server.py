"""Start, update and stop the forecasting service from Python, from a Ray Serve config file.

This does what `serve run configs/serve.yaml` does (start Serve with the file's HTTP and gRPC options,
then deploy its applications), with overrides for the options people change most (model, data, ports,
replicas). The command line (`energyopt serve`), the tests and the benchmark all start the service here.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "serve.yaml"
APP_NAME = "energyopt"
DEPLOYMENT = "Forecaster"


def load_config(
    path: str | Path | None = None,
    *,
    model: str | Path | None = None,
    anomaly_model: str | Path | None = None,
    data: str | Path | None = None,
    store: str | Path | None = None,
    grpc_port: int | None = None,
    http_port: int | None = None,
    replicas: int | None = None,
    args: dict[str, Any] | None = None,
    user_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Serve config (a dict in ServeDeploySchema form) from `path` (default configs/serve.yaml)
    with overrides. Paths given here are made absolute, so replicas find them wherever they run.
    `replicas` fixes the replica count (no autoscaling)."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no Serve config at {path}")
    config = yaml.safe_load(path.read_text())
    app = _app(config)
    deployment = _deployment(app)
    app_args, replica_config = app.setdefault("args", {}), deployment.setdefault("user_config", {})
    if model is not None:
        replica_config["model"] = str(Path(model).expanduser().resolve())
    if anomaly_model is not None:  # DetectAnomalies' bundle
        replica_config["anomaly_model"] = str(Path(anomaly_model).expanduser().resolve())
    if data is not None:
        app_args["data"] = str(Path(data).expanduser().resolve())
    if store is not None:  # a URL as given, a SQLite path made absolute
        app_args["store"] = str(store) if "://" in str(store) else str(Path(store).expanduser().resolve())
    for options, port in (("grpc_options", grpc_port), ("http_options", http_port)):
        if port is not None:
            config.setdefault(options, {})["port"] = port
    if replicas is not None:
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = replicas
    app_args.update(args or {})
    replica_config.update(user_config or {})
    _validate(config)
    return config


def with_model(config: dict[str, Any], model: str | Path) -> dict[str, Any]:
    """A copy of `config` serving another bundle (deploy it with `deploy` to swap models in place)."""
    config = copy.deepcopy(config)
    _deployment(_app(config)).setdefault("user_config", {})["model"] = str(Path(model).expanduser().resolve())
    return config


# Ray Serve's high-throughput mode (Ray >= 2.55): HAProxy (C) is the HTTP and gRPC ingress and forwards
# straight to the replicas' own gRPC/HTTP servers, instead of Serve's Python proxy actor relaying every
# call through a Ray actor call. Here it halves the latency of a small request and doubles throughput.
HIGH_THROUGHPUT_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def configure_local_ray(haproxy: bool = True) -> None:
    """Environment for a Ray instance this process starts (call before `ray.init`; Serve reads it in
    every Ray process). Values already set in the environment win."""
    # Ray runs its workers at nice 15 so that its own daemons stay responsive; a replica answering
    # latency-bound requests should not yield to every other process on the machine.
    os.environ.setdefault("RAY_worker_niceness", "0")
    if haproxy:
        for key, value in HIGH_THROUGHPUT_ENV.items():
            os.environ.setdefault(key, value)
        # Ports of this instance's own, below the kernel's ephemeral range (a port picked there can be taken by
        # an outgoing connection before Serve binds it): HAProxy's stats and metrics listeners (fixed
        # defaults otherwise); and the ports Serve (Ray 2.60) opens with SO_REUSEPORT, so that two services
        # on one machine would share them and the kernel would hand one's connections to the other (seen:
        # readings acknowledged by another service's replica): the fallback proxy's (fixed 8500/9500) and
        # the replicas' direct-ingress ports (40000 on; `grpc.so_reuseport` is passed as the string "0",
        # which gRPC ignores).
        base = free_port_block(68)
        for key, port in (("RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT", base),
                          ("RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT", base + 31),
                          ("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", base + 32),
                          ("RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", base + 63),
                          ("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", base + 64),
                          ("RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", base + 65),
                          ("RAY_SERVE_HAPROXY_STATS_PORT", base + 66),
                          ("RAY_SERVE_HAPROXY_METRICS_PORT", base + 67)):
            os.environ.setdefault(key, str(port))
        # A replica told to stop stays reachable this long so that load balancers in front can deregister
        # it (Serve's default: 30 s, so Ctrl-C took over 30 s). Here the only balancer is this instance's
        # own HAProxy, which is reconfigured at once and retries a refused connection on another replica.
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "3")


def start(config: dict[str, Any], *, haproxy: bool = True, timeout_s: float = 180.0,
          num_cpus: int | None = None, metrics_port: int | None = None,
          log: Callable[[str], None] | None = None) -> None:
    """Start Serve (and a local Ray, unless connected to one or RAY_ADDRESS names a cluster) with the
    config's proxies, deploy its application and wait until it is RUNNING. `haproxy` selects Serve's
    high-throughput ingress for a local Ray started here (a running cluster keeps its own setting), and
    `metrics_port` its metrics export port (Ray's and the application's metrics for Prometheus,
    docs/monitoring.md; None: a free port Ray picks, see `metrics_export_port()`). `log` hears what seeding the
    store did."""
    import ray
    from ray.serve._private.api import serve_start  # what `serve run` uses; no public equivalent yet
    from ray.serve.config import gRPCOptions

    from models.runtime import ensure_ray

    prepare_store(config, log)
    schema = _validate(config)
    local = {}
    if not ray.is_initialized():
        configure_local_ray(haproxy)
        if metrics_port is not None and not os.environ.get("RAY_ADDRESS"):  # a cluster keeps its own port
            local["_metrics_export_port"] = metrics_port
    # Ray's own start-up lines stay in the terminal of `energyopt serve`
    ensure_ray(namespace="serve", include_dashboard=False, num_cpus=num_cpus, configure_logging=True, **local)
    client = serve_start(
        http_options=schema.http_options.model_dump(),
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
        proxy_location=schema.proxy_location,
    )
    client.deploy_apps(schema)
    wait_running(timeout_s=timeout_s)


def metrics_export_port() -> int | None:
    """The metrics export port of this process's Ray node (where Prometheus scrapes Ray's and the
    application's metrics), None when the node has none."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    port = next((n.get("MetricsExportPort") for n in ray.nodes() if n.get("NodeID") == node), None)
    return port if port and port > 0 else None


def prepare_store(config: dict[str, Any], log: Callable[[str], None] | None = None) -> None:
    """Migrate and seed the application's store here, once, before replicas start (they would otherwise
    race to seed an empty store; they still migrate and skip seeded files themselves). A relative SQLite
    path is made absolute first, so replicas open the same file wherever Ray runs them."""
    from serving.app import AppArgs, open_store

    args = _app(config).setdefault("args", {})
    store = args.get("store") or "runs/store.db"
    if "://" not in str(store):
        args["store"] = str(Path(store).expanduser().resolve())
    open_store(AppArgs.model_validate(args), log).close()


def deploy(config: dict[str, Any], *, timeout_s: float = 180.0) -> None:
    """Apply a changed config to the running service (e.g. a new model in user_config) and wait until
    it is RUNNING again. Replicas keep answering meanwhile."""
    from ray.serve.context import _get_global_client

    _get_global_client().deploy_apps(_validate(config))
    time.sleep(0.5)  # let the controller pick the new target up before polling its status
    wait_running(timeout_s=timeout_s)


def wait_running(name: str = APP_NAME, timeout_s: float = 180.0) -> None:
    """Block until the application is RUNNING; raise RuntimeError with Serve's message if it fails."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = serve.status().applications.get(name)
        if status is not None:
            if status.status == "RUNNING":
                return
            if status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                messages = [status.message] + [d.message for d in status.deployments.values() if d.message]
                raise RuntimeError(f"Serve application {name} is {status.status}: "
                                   + " | ".join(m for m in messages if m))
        time.sleep(0.25)
    raise TimeoutError(f"Serve application {name} not RUNNING after {timeout_s:.0f} s "
                       f"(last status: {status.status if status else 'not deployed'})")


def shutdown() -> None:
    """Stop Serve (the application and its proxies)."""
    from ray import serve

    serve.shutdown()


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on all interfaces (held open together, so none is handed out twice)."""
    import contextlib
    import socket

    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("0.0.0.0", 0))
        return [s.getsockname()[1] for s in sockets]


def free_port_block(n: int) -> int:
    """The first of `n` consecutive ports that nothing listens on now, below the ephemeral range (so the
    kernel does not hand them to outgoing connections meanwhile)."""
    import random
    import socket

    for _ in range(200):
        base = random.randrange(20_000, 32_000 - n)
        try:
            for port in range(base, base + n):
                for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                    with socket.socket(family) as probe:
                        probe.bind((host, port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {n} consecutive free ports")


def with_schedule(config: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of `config` with the Scheduler's user_config changed (serving.scheduler.ScheduleConfig fields;
    `deploy` it to apply it to the running scheduler without a restart)."""
    config = copy.deepcopy(config)
    _deployment(_app(config), "Scheduler").setdefault("user_config", {}).update(changes)
    return config


def _app(config: dict[str, Any]) -> dict[str, Any]:
    apps = [a for a in config.get("applications", []) if a.get("name") == APP_NAME]
    if len(apps) != 1:
        raise ValueError(f"the Serve config needs one application named {APP_NAME!r}")
    return apps[0]


def _deployment(app: dict[str, Any], name: str = DEPLOYMENT) -> dict[str, Any]:
    deployments = app.setdefault("deployments", [])
    if not any(d.get("name") == name for d in deployments):
        deployments.append({"name": name})
    return next(d for d in deployments if d.get("name") == name)


def _validate(config: dict[str, Any]):  # noqa: ANN202
    from ray.serve.schema import ServeDeploySchema

    from serving.app import AppArgs, ReplicaConfig

    app = _app(config)
    AppArgs.model_validate(app.get("args") or {})
    ReplicaConfig.model_validate(_deployment(app).get("user_config") or {})
    return ServeDeploySchema.model_validate(config)


def main(argv: list[str] | None = None) -> None:
    """`python -m serving.server [--model DIR] ...`: start the service and block until interrupted."""
    import argparse
    import json
    import signal

    parser = argparse.ArgumentParser(description="Start the forecasting service (Ray Serve) in the foreground.")
    parser.add_argument("--config", default=None, help="Ray Serve config file (default: configs/serve.yaml).")
    parser.add_argument("--model", default=None, help="Model bundle directory (default: the config's).")
    parser.add_argument("--data", default=None, help="Long-format history file (default: the config's).")
    parser.add_argument("--grpc-port", type=int, default=None)
    parser.add_argument("--http-port", type=int, default=None)
    parser.add_argument("--replicas", type=int, default=None, help="Fixed replica count (no autoscaling).")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance.")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="Metrics export port of the local Ray instance (default: a free one, printed).")
    parser.add_argument("--user-config", default=None, help="JSON merged into the deployment's user_config.")
    parser.add_argument("--args", default=None, help="JSON merged into the application's args.")
    parser.add_argument("--no-haproxy", action="store_true",
                        help="Serve's Python proxies instead of the HAProxy high-throughput ingress.")
    a = parser.parse_args(argv)
    config = load_config(a.config, model=a.model, data=a.data, grpc_port=a.grpc_port, http_port=a.http_port,
                         replicas=a.replicas, args=json.loads(a.args) if a.args else None,
                         user_config=json.loads(a.user_config) if a.user_config else None)
    start(config, haproxy=not a.no_haproxy, num_cpus=a.num_cpus, metrics_port=a.metrics_port)
    print(f"READY grpc={config['grpc_options']['port']} http={config['http_options']['port']} "
          f"metrics={metrics_export_port()}", flush=True)
    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    try:
        while not stop:
            time.sleep(0.2)
    finally:
        shutdown()


if __name__ == "__main__":
    main()
