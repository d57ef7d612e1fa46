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
    host: str | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    tls_client_ca: str | Path | None = None,
) -> dict[str, Any]:
    """The Serve config (a dict in ServeDeploySchema form) from `path` (default configs/serve.yaml)
    with overrides. Paths given here are made absolute, so replicas find them wherever they run.
    `replicas` fixes the replica count (no autoscaling). `tls_cert`, `tls_key` (PEM files): TLS on the HTTP and
    gRPC ports (http_options.ssl_certfile, ssl_keyfile); `tls_client_ca`: clients need a certificate it signed
    (http_options.ssl_ca_certs; docs/security.md)."""
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
    if host is not None:  # HTTP, gRPC (HAProxy binds both there) and, for a local Ray, every other socket
        config.setdefault("http_options", {})["host"] = host
    for field, file in (("ssl_certfile", tls_cert), ("ssl_keyfile", tls_key), ("ssl_ca_certs", tls_client_ca)):
        if file is not None:
            config.setdefault("http_options", {})[field] = str(file)
    for field in _SSL_FILES:  # read by Ray's workers, whatever their working directory
        if (config.get("http_options") or {}).get(field):
            config["http_options"][field] = str(Path(config["http_options"][field]).expanduser().resolve())
    for options, port in (("grpc_options", grpc_port), ("http_options", http_port)):
        if port is not None:
            config.setdefault(options, {})["port"] = port
    if replicas is not None:
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = replicas
    app_args.update(args or {})
    if app_args.get("api_keys"):  # the key file, found by replicas wherever they run
        app_args["api_keys"] = str(Path(app_args["api_keys"]).expanduser().resolve())
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


# Loopback (docs/resilience.md): where a local Ray and the service bind, unless `--host` says otherwise.
DEFAULT_HOST = "127.0.0.1"
BIND_HOST_ENV = "ENERGYOPT_BIND_HOST"
# Ray runs `module.function` in every worker process it starts, before the worker runs anything (the env var
# behind ray.init's runtime_env `worker_process_setup_hook`; set here it reaches every worker, Serve's
# controller, HAProxy manager, proxies and replicas included, with no runtime-env agent round trip).
SETUP_HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
SETUP_HOOK = "serving.server.worker_setup"
_WILDCARDS = ("", "*", "0.0.0.0", "::", "[::]")


def is_loopback(host: str | None) -> bool:
    return host in ("127.0.0.1", "localhost", "::1", "[::1]") or bool(host and host.startswith("127."))


def worker_setup() -> None:
    """Ray worker setup hook (SETUP_HOOK). Two jobs, each from environment variables set before Ray started:

    Loopback: Serve (Ray 2.60) binds some sockets to every interface whatever http_options.host says, with no
    setting to change it: the replicas' direct-ingress and inter-deployment gRPC servers and the fallback gRPC
    proxy (`[::]:port`), HAProxy's stats page (`*:port`) and metrics (`:port`), and HAProxy's admin socket is
    created mode 666 at level admin. With a loopback ENERGYOPT_BIND_HOST, gRPC's wildcard binds go to that host
    and HAProxy's config template binds its stats and metrics there, its admin socket mode 600 (its owner only).

    TLS (ENERGYOPT_TLS_PEM, whatever the host; see `tls_environment`): HAProxy's HTTP and gRPC frontends bind
    with `ssl crt`, and Serve's Python gRPC proxy serves the service's gRPC port with `add_secure_port` (Serve
    has no TLS setting for either); with ENERGYOPT_TLS_CLIENT_CA both require a client certificate it signed,
    and so does uvicorn (Serve hands it ssl_ca_certs but never asks it to require a certificate)."""
    bind = _loopback_bind()
    pem = os.environ.get(TLS_PEM_ENV) or None
    client_ca = os.environ.get(TLS_CLIENT_CA_ENV) or None
    if bind is None and pem is None:
        return
    import grpc
    import grpc._server
    import grpc.aio._server

    credentials, tls_port = None, os.environ.get(TLS_GRPC_PORT_ENV)
    if pem is not None and tls_port:
        key, chain = _split_pem(Path(pem).read_bytes())
        credentials = grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=Path(client_ca).read_bytes() if client_ca else None,
            require_client_auth=client_ca is not None)

    def rebound(address: str) -> str:
        where, _, port = address.rpartition(":")
        return f"{bind}:{port}" if bind is not None and where in _WILDCARDS else address

    for cls in (grpc.aio._server.Server, grpc._server._Server):  # the implementations (grpc.aio.Server: an ABC)
        for name in ("add_insecure_port", "add_secure_port"):
            original = getattr(cls, name, None)
            if original is None or getattr(original, "_energyopt", False):
                continue

            def patched(self, address, *rest, _original=original, _name=name, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
                if credentials is not None and _name == "add_insecure_port" and address.rpartition(":")[2] == tls_port:
                    return self.add_secure_port(address, credentials)  # the service's gRPC port (Python proxy)
                return _original(self, rebound(address), *rest, **kw)

            patched._energyopt = True
            setattr(cls, name, patched)
    if client_ca is not None:
        _require_client_certificates_in_uvicorn()
    import sys

    from ray.serve._private import haproxy_templates

    template = haproxy_templates.HAPROXY_CONFIG_TEMPLATE
    if bind is not None:
        template = (template
                    .replace("bind *:{{ config.stats_port }}", f"bind {bind}:{{{{ config.stats_port }}}}")
                    .replace("bind :{{ config.metrics_port }}", f"bind {bind}:{{{{ config.metrics_port }}}}")
                    .replace(" mode 666 level admin", " mode 600 level admin"))
    if pem is not None:
        template = tls_template(template, pem, client_ca)
    template = template.replace(_NO_APP_ANSWER, _STARTING_ANSWER)
    haproxy_templates.HAPROXY_CONFIG_TEMPLATE = template
    if "ray.serve._private.haproxy" in sys.modules:
        sys.modules["ray.serve._private.haproxy"].HAPROXY_CONFIG_TEMPLATE = template


def _loopback_bind() -> str | None:
    """The loopback address (bracketed if IPv6) that wildcard binds go to in this worker, None for none."""
    host = os.environ.get(BIND_HOST_ENV)
    if not is_loopback(host):
        return None
    import ray

    try:
        node = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - a hook that raises ends the worker
        return None
    if not is_loopback(node):  # a node on the network: peers reach this worker at its address
        return None
    return f"[{host.strip('[]')}]" if ":" in host else host


# TLS from http_options (docs/security.md), handed to Ray's workers by environment (worker_setup)
TLS_PEM_ENV = "ENERGYOPT_TLS_PEM"  # certificate chain and key in one PEM file (HAProxy's `crt`)
TLS_CLIENT_CA_ENV = "ENERGYOPT_TLS_CLIENT_CA"  # set: clients must present a certificate this CA signed (mTLS)
TLS_GRPC_PORT_ENV = "ENERGYOPT_TLS_GRPC_PORT"  # the gRPC port that Serve's Python proxy serves with TLS
_SSL_FILES = ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs")
_HTTP_BIND = "bind {{ config.frontend_host }}:{{ config.frontend_port }}"
_GRPC_BIND = "bind {{ config.grpc_frontend_host }}:{{ config.grpc_frontend_port }} proto h2"
_tls_dir: Path | None = None  # this process's private copy of the certificate, removed by `shutdown`


def tls_template(template: str, pem: str, client_ca: str | None) -> str:
    """HAProxy's config `template` with TLS on its HTTP and gRPC frontends (`pem`: chain and key; `client_ca`:
    mTLS). ValueError when the template lacks either bind line (another Ray version): never plaintext instead."""
    verify = f" ca-file {client_ca} verify required" if client_ca else ""
    for line, alpn in ((_HTTP_BIND, "h2,http/1.1"), (_GRPC_BIND, "h2")):
        if template.count(line + "\n") != 1:
            raise ValueError(f"TLS: Ray Serve's HAProxy config template has no line {line!r} to add TLS to "
                             "(another Ray version?); serve with --no-haproxy (docs/security.md)")
        template = template.replace(line + "\n", f"{line} ssl crt {pem} alpn {alpn}{verify}\n")
    return template


def check_tls(http_options: dict[str, Any]) -> bool:
    """Whether `http_options` configure TLS (ssl_certfile and ssl_keyfile), after checking that the files read,
    that the key is the certificate's and unencrypted, and that ssl_ca_certs (mTLS) holds certificates:
    ValueError naming the field otherwise."""
    import ssl

    cert, key, ca = (http_options.get(f) for f in _SSL_FILES)
    if not cert and not key:
        if ca:
            raise ValueError("http_options.ssl_ca_certs (--tls-client-ca) needs ssl_certfile and ssl_keyfile "
                             "(--tls-cert, --tls-key)")
        return False
    if not cert or not key:
        raise ValueError("TLS needs both http_options.ssl_certfile and ssl_keyfile (--tls-cert and --tls-key)")
    for field in _SSL_FILES:
        if http_options.get(field):
            try:
                text = Path(http_options[field]).read_text(errors="replace")
            except OSError as err:
                raise ValueError(f"http_options.{field} {http_options[field]}: {err.strerror}") from None
            if "-----BEGIN " not in text:
                raise ValueError(f"http_options.{field} {http_options[field]}: not a PEM file")
            if field == "ssl_keyfile" and "ENCRYPTED" in text:
                # HAProxy and gRPC read the key unprompted: no passphrase
                raise ValueError(f"http_options.ssl_keyfile {key}: the key is encrypted; serve an unencrypted "
                                 "copy readable by its owner only (`openssl pkey -in KEY -out KEY.plain`)")
    if http_options.get("ssl_keyfile_password"):
        raise ValueError("http_options.ssl_keyfile_password: an encrypted key is not supported (HAProxy and gRPC "
                         "read the key unprompted); serve an unencrypted copy readable by its owner only")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as err:
        raise ValueError(f"http_options.ssl_certfile {cert} and ssl_keyfile {key}: not a certificate and its "
                         f"private key ({err.reason or err})") from None
    if ca:
        try:
            ssl.create_default_context(cafile=ca)
        except ssl.SSLError as err:
            raise ValueError(f"http_options.ssl_ca_certs {ca}: not CA certificates ({err.reason or err})") from None
    return True


def tls_environment(http_options: dict[str, Any], grpc_port: int | None) -> None:
    """Hand the TLS of `http_options` (checked by `check_tls`) to the Ray workers this process is about to
    start, by environment (worker_setup reads it): certificate and key in one PEM (HAProxy wants one file) and
    the client CA, copied into a private directory (mode 700, files 600) that `shutdown` removes. No TLS:
    unsets the variables, so the config is the one place that says what the service serves."""
    import shutil
    import tempfile

    global _tls_dir
    for name in (TLS_PEM_ENV, TLS_CLIENT_CA_ENV, TLS_GRPC_PORT_ENV):
        os.environ.pop(name, None)
    if not http_options.get("ssl_certfile"):
        return
    # mode 700; under Ray's temporary directory when one is set (removed with it)
    _tls_dir = Path(tempfile.mkdtemp(prefix="energyopt-tls-", dir=os.environ.get("RAY_TMPDIR") or None))
    pem, ca = _tls_dir / "server.pem", _tls_dir / "client-ca.pem"
    for path, parts in ((pem, ("ssl_certfile", "ssl_keyfile")), (ca, ("ssl_ca_certs",))):
        if http_options.get(parts[0]):
            path.touch(mode=0o600)
            path.write_text("".join(Path(http_options[p]).read_text().rstrip("\n") + "\n" for p in parts))
    os.environ[TLS_PEM_ENV] = str(pem)
    if ca.exists():
        os.environ[TLS_CLIENT_CA_ENV] = str(ca)
    if grpc_port:
        os.environ[TLS_GRPC_PORT_ENV] = str(grpc_port)
    os.environ.setdefault(SETUP_HOOK_ENV, SETUP_HOOK)  # beyond loopback too
    import atexit

    atexit.register(shutil.rmtree, _tls_dir, ignore_errors=True)  # also when the service dies without shutdown


def _split_pem(pem: bytes) -> tuple[bytes, bytes]:
    """(private key, certificate chain) of a PEM holding both (gRPC takes them apart)."""
    import re

    found = [m.group(0) for m in re.finditer(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----\n?", pem, re.DOTALL)]
    key = b"".join(b for b in found if b"PRIVATE KEY-----" in b.split(b"\n", 1)[0])
    return key, b"".join(b for b in found if b.startswith(b"-----BEGIN CERTIFICATE-----"))


def _require_client_certificates_in_uvicorn() -> None:
    """uvicorn (Serve's Python HTTP proxy) given ssl_ca_certs requires a client certificate signed by it."""
    import ssl

    import uvicorn

    init = uvicorn.Config.__init__
    if getattr(init, "_energyopt", False):
        return

    def verifying(self, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if kw.get("ssl_ca_certs"):
            kw["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        init(self, *args, **kw)

    verifying._energyopt = True
    uvicorn.Config.__init__ = verifying


# HAProxy's gRPC answer while no application is deployed (and to a call naming none when several are): a
# Ray-internal NOT_FOUND. While none is deployed yet (start-up) the service is not there yet: UNAVAILABLE,
# which clients retry (serving/client.py); with several applications deployed it stays NOT_FOUND.
_NO_APP_ANSWER = ('http-request return status 200 content-type application/grpc hdr grpc-status 5 hdr grpc-message '
                  '"Application metadata not set.')
_STARTING_ANSWER = ("{% if grpc_backends|length == 0 %}http-request return status 200 content-type application/grpc "
                    'hdr grpc-status 14 hdr grpc-message "the service is starting"\n    {% endif %}' + _NO_APP_ANSWER)


def configure_local_ray(haproxy: bool = True, host: str = DEFAULT_HOST) -> None:
    """Environment for a Ray instance this process starts (call before `ray.init`; Serve reads it in
    every Ray process). Values already set in the environment win. `host`: where every socket of Ray and
    of the service binds (a loopback address keeps them all off the network; docs/resilience.md)."""
    os.environ.setdefault(BIND_HOST_ENV, host)
    if is_loopback(os.environ[BIND_HOST_ENV]):
        # Ray's single-machine mode (its default on macOS and Windows): the node's address is 127.0.0.1, so
        # the GCS, the raylet, the object manager, the dashboard agent and every worker's own gRPC server bind
        # loopback instead of every interface (nothing else changes: `ray start` would refuse to add nodes).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        if os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
            # read when Ray is imported, which this process may have done already (its daemons and workers
            # read the environment)
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
        # what Serve binds to every interface regardless: see worker_setup
        os.environ.setdefault(SETUP_HOOK_ENV, SETUP_HOOK)
    # Ray runs its workers at nice 15 so that its own daemons stay responsive; a replica answering
    # latency-bound requests should not yield to every other process on the machine.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # Serve's gRPC servers (proxy and direct ingress) take messages up to 2 GiB by default, read in full before
    # a replica sees them; 64 MiB holds the largest request the limits admit (2M values ~ 16 MB)
    os.environ.setdefault("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE", str(64 << 20))
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
        # A killed HAProxy is noticed by the controller's health check of its manager (every 10 s by default,
        # unhealthy after 3 failed checks, then the manager is restarted: ~30-45 s without an ingress).
        # Checked every 0.5 s, a dead HAProxy is noticed in ~1.5 s; restarting the manager (a new worker process)
        # and its HAProxy takes the rest (docs/resilience.md: ~10 s in all on 2 busy cores).
        os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S", "0.5")
    # Ray's memory monitor kills workers when the machine's memory use passes 95 %, whoever uses it: another
    # process's growth took every Serve actor down. Off for the local service: the kernel's OOM killer then
    # picks the process with the largest footprint (typically the one growing), and Serve restarts a replica
    # it took. On a cluster, set memory in ray_actor_options instead (docs/resilience.md).
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    # glibc's allocator, in every Ray process started from here: a replica's threads each got an arena of their
    # own (up to 8 per core), and buffers of megabyte requests were carved from them and kept after use, so a
    # replica's memory ratcheted up under varied traffic (+15 % over a fuzz run). Two arenas, and allocations
    # from 1 MiB always mapped and unmapped (no dynamic threshold): memory goes back to the system after a
    # large request (docs/resilience.md, "Memory of a replica").
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))


def start(config: dict[str, Any], *, haproxy: bool = True, timeout_s: float = 180.0,
          num_cpus: int | None = None, metrics_port: int | None = None,
          log: Callable[[str], None] | None = None) -> None:
    """Start Serve (and a local Ray, unless connected to one or RAY_ADDRESS names a cluster) with the
    config's proxies, deploy its application and wait until it is RUNNING. `haproxy` selects Serve's
    high-throughput ingress for a local Ray started here (a running cluster keeps its own setting), and
    `metrics_port` its metrics export port (Ray's and the application's metrics for Prometheus,
    docs/monitoring.md; None: a free port Ray picks, see `metrics_export_port()`). `log` hears what seeding the
    store did. http_options' ssl_* files (checked by `check_tls`) put TLS on the HTTP and gRPC ports, in either
    ingress; they need a Ray started here (docs/security.md)."""
    import ray
    from ray.serve._private.api import serve_start  # what `serve run` uses; no public equivalent yet
    from ray.serve.config import gRPCOptions

    from models.runtime import ensure_ray
    from serving.auth import startup_check

    startup_check(config)  # no unauthenticated service beyond loopback; a key file that does not read
    schema = _validate(config)
    http_options = schema.http_options.model_dump()
    tls = check_tls(http_options)  # before anything starts: a clear error for a file that will not do
    if tls and (ray.is_initialized() or os.environ.get("RAY_ADDRESS")):
        raise ValueError("TLS from http_options needs a Ray started here: the certificate reaches Ray's workers by "
                         "environment (on a cluster, terminate TLS at the ingress; docs/security.md)")
    prepare_store(config, log)
    local = {}
    if not ray.is_initialized():
        host = schema.http_options.host or DEFAULT_HOST
        configure_local_ray(haproxy, host)
        if not os.environ.get("RAY_ADDRESS"):  # a cluster keeps its own port and addresses
            if metrics_port is not None:
                local["_metrics_export_port"] = metrics_port
            if haproxy:
                stop_stale_haproxy(config, log)
    in_haproxy = os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
    if in_haproxy:
        # HAProxy terminates TLS (worker_setup); the replicas' direct-ingress HTTP servers, which take
        # http_options too, stay plaintext behind it on loopback or the cluster's private network
        http_options = {k: v for k, v in http_options.items() if not k.startswith("ssl_")}
        if tls:
            from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

            tls_template(HAPROXY_CONFIG_TEMPLATE, "server.pem", None)  # ValueError: this Ray's has no bind lines
    if not ray.is_initialized():  # workers read the environment when they start
        tls_environment(schema.http_options.model_dump() if tls else {},
                        None if in_haproxy else schema.grpc_options.port)
    # Ray's own start-up lines stay in the terminal of `energyopt serve`
    ensure_ray(namespace="serve", include_dashboard=False, num_cpus=num_cpus, configure_logging=True, **local)
    client = serve_start(
        http_options=http_options,
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
        proxy_location=schema.proxy_location,
    )
    client.deploy_apps(schema)
    wait_running(timeout_s=timeout_s)


def listeners(pids: set[int] | None = None) -> list[tuple[int, str, int]]:
    """Listening TCP sockets on this machine (Linux /proc): (pid, address, port) of each, for the processes
    in `pids` (None: every process whose file descriptors this user can read)."""
    import ipaddress

    sockets: dict[str, tuple[str, int]] = {}
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))  # little-endian 32-bit words
            sockets[fields[9]] = (str(ipaddress.ip_address(raw)), int(port, 16))
    found = []
    for pid in pids if pids is not None else [int(e) for e in os.listdir("/proc") if e.isdigit()]:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        found += [(pid, *sockets[link[8:-1]]) for link in set(links)
                  if link.startswith("socket:[") and link[8:-1] in sockets]
    return found


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def stop_stale_haproxy(config: dict[str, Any], log: Callable[[str], None] | None = None) -> list[int]:
    """Stop an HAProxy left listening on this service's HTTP or gRPC port by a service that was killed
    (kill -9 of its process group leaves Serve's HAProxy, another session's child, running and holding the
    ports): SIGTERM, then SIGKILL after 2 s. Returns the pids stopped."""
    import signal

    ports = {config.get(o, {}).get("port") for o in ("http_options", "grpc_options")} - {None}
    stale = set()
    for pid, _, port in listeners():
        if port not in ports:
            continue
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # Serve's: its config lives under RAY_SERVE_HAPROXY_CONFIG_FILE_LOC's folder (/tmp/haproxy-serve)
        config_dir = os.path.dirname(os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "/tmp/haproxy-serve/x"))
        if b"haproxy" in args[0] and any(a.startswith(config_dir.encode()) for a in args[1:]):
            stale.add(pid)
    for pid in stale:
        (log or _stderr)(f"stopping a stale HAProxy (pid {pid}) of a killed service still listening on "
                       f"port(s) {sorted(ports)}")
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 2
    while stale and time.monotonic() < deadline:
        stale = {pid for pid in stale if Path(f"/proc/{pid}").exists()
                 and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"}
        time.sleep(0.1)
    for pid in stale:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return sorted(stale)


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
    import shutil

    from ray import serve

    serve.shutdown()
    if _tls_dir is not None:  # the private copy of the key (tls_environment)
        shutil.rmtree(_tls_dir, ignore_errors=True)


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
    parser.add_argument("--host", default=None, help="Address the service and its local Ray bind to (default: "
                        "the config's http_options.host, 127.0.0.1; 0.0.0.0: every interface).")
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
    parser.add_argument("--tls-cert", default=None, help="Server certificate (PEM): TLS on HTTP and gRPC.")
    parser.add_argument("--tls-key", default=None, help="Its private key (PEM, unencrypted).")
    parser.add_argument("--tls-client-ca", default=None, help="CA (PEM) whose client certificates are required.")
    a = parser.parse_args(argv)
    config = load_config(a.config, model=a.model, data=a.data, grpc_port=a.grpc_port, http_port=a.http_port,
                         replicas=a.replicas, args=json.loads(a.args) if a.args else None,
                         user_config=json.loads(a.user_config) if a.user_config else None, host=a.host,
                         tls_cert=a.tls_cert, tls_key=a.tls_key, tls_client_ca=a.tls_client_ca)
    from serving.auth import startup_check

    start(config, haproxy=not a.no_haproxy, num_cpus=a.num_cpus, metrics_port=a.metrics_port)
    print(startup_check(config), flush=True)
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
