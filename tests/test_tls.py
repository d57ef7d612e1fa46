"""TLS and mTLS on the service's HTTP and gRPC ports from the config's certificate files (docs/security.md):
the checks at start in process, then real services (their own Ray, tests/servers.py) with certificates made
here by the openssl command: HAProxy ingress with TLS, with mTLS, and Serve's Python proxies with mTLS."""

from __future__ import annotations

import http.client
import os
import ssl
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from serving import auth
from serving import server as srv


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(root: Path) -> dict[str, Path]:
    """A CA, a server certificate it signed (localhost, 127.0.0.1) and a client certificate it signed, with
    their keys, under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    files = {name: root / name for name in ("ca.crt", "ca.key", "server.crt", "server.key", "client.crt",
                                            "client.key")}
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(files["ca.key"]), "-out",
             str(files["ca.crt"]), "-days", "1", "-subj", "/CN=energyopt test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, extensions in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
                             ("client", "extendedKeyUsage=clientAuth")):
        csr, ext = root / f"{name}.csr", root / f"{name}.ext"
        ext.write_text(extensions + "\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(files[f"{name}.key"]), "-out", str(csr),
                 "-subj", f"/CN={'localhost' if name == 'server' else 'energyopt test client'}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(files["ca.crt"]), "-CAkey", str(files["ca.key"]),
                 "-CAcreateserial", "-out", str(files[f"{name}.crt"]), "-days", "1", "-extfile", str(ext))
    return files


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certificates(tmp_path_factory.mktemp("certs"))


# ---------------------------------------------------------------------------------------------- in process


def test_start_refuses_tls_files_that_will_not_do(certs: dict[str, Path], tmp_path: Path):
    def options(cert: Path | None = certs["server.crt"], key: Path | None = certs["server.key"],
                ca: Path | None = None) -> dict:
        return {"ssl_certfile": cert and str(cert), "ssl_keyfile": key and str(key), "ssl_ca_certs": ca and str(ca)}

    assert srv.check_tls(options()) and srv.check_tls(options(ca=certs["ca.crt"]))
    assert not srv.check_tls({}) and not srv.check_tls(options(None, None))
    with pytest.raises(ValueError, match=r"ssl_certfile .* and ssl_keyfile .*: not a certificate and its private key"):
        srv.check_tls(options(key=certs["client.key"]))  # another certificate's key
    with pytest.raises(ValueError, match=r"http_options.ssl_keyfile .*missing.key: No such file"):
        srv.check_tls(options(key=tmp_path / "missing.key"))
    with pytest.raises(ValueError, match="needs both"):
        srv.check_tls(options(key=None))
    with pytest.raises(ValueError, match="ssl_ca_certs .* needs ssl_certfile"):
        srv.check_tls(options(None, None, certs["ca.crt"]))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="ssl_ca_certs .*junk.pem: not a PEM file"):
        srv.check_tls(options(ca=tmp_path / "junk.pem"))
    encrypted = tmp_path / "encrypted.key"
    _openssl("pkey", "-in", str(certs["server.key"]), "-out", str(encrypted), "-aes256", "-passout", "pass:x")
    with pytest.raises(ValueError, match="the key is encrypted"):
        srv.check_tls(options(key=encrypted))
    # the command line sets the fields, paths made absolute
    config = srv.load_config(tls_cert=os.path.relpath(certs["server.crt"]), tls_key=certs["server.key"],
                             tls_client_ca=certs["ca.crt"])
    assert config["http_options"]["ssl_certfile"] == str(certs["server.crt"].resolve())
    assert config["http_options"]["ssl_ca_certs"] == str(certs["ca.crt"].resolve())


def test_serve_with_a_key_that_is_not_the_certificates_exits_with_one_line(certs: dict[str, Path],
                                                                         tiny_bundle_dir: Path):
    from typer.testing import CliRunner

    from energyopt.cli import app

    ports = [str(p) for p in srv.free_ports(3)]
    result = CliRunner().invoke(app, ["serve", "--model", str(tiny_bundle_dir), "--grpc-port", ports[0],
                                      "--http-port", ports[1], "--metrics-port", ports[2],
                                      "--tls-cert", str(certs["server.crt"]), "--tls-key", str(certs["client.key"])])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "not a certificate and its private key" in output, output
    assert "Traceback" not in output


def test_haproxys_template_gets_tls_on_both_frontends_or_the_start_fails():
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

    plain = srv.tls_template(HAPROXY_CONFIG_TEMPLATE, "/x/server.pem", None)
    assert "{{ config.frontend_port }} ssl crt /x/server.pem alpn h2,http/1.1\n" in plain
    assert " proto h2 ssl crt /x/server.pem alpn h2\n" in plain and "verify required" not in plain
    mutual = srv.tls_template(HAPROXY_CONFIG_TEMPLATE, "/x/server.pem", "/x/ca.pem")
    assert mutual.count(" ca-file /x/ca.pem verify required\n") == 2
    with pytest.raises(ValueError, match="has no line"):  # another Ray's template: no plaintext instead
        srv.tls_template(HAPROXY_CONFIG_TEMPLATE.replace(" proto h2", " proto h2 accept-proxy"), "/x/s.pem", None)


def test_the_certificate_reaches_rays_workers_in_a_private_file(certs: dict[str, Path],
                                                                monkeypatch: pytest.MonkeyPatch):
    for name in (srv.TLS_PEM_ENV, srv.TLS_CLIENT_CA_ENV, srv.TLS_GRPC_PORT_ENV, srv.SETUP_HOOK_ENV):
        monkeypatch.delenv(name, raising=False)
    options = {"ssl_certfile": str(certs["server.crt"]), "ssl_keyfile": str(certs["server.key"]),
               "ssl_ca_certs": str(certs["ca.crt"])}
    monkeypatch.setattr(srv, "_tls_dir", None)
    srv.tls_environment(options, 9443)
    try:
        pem = Path(os.environ[srv.TLS_PEM_ENV])
        assert stat.S_IMODE(pem.parent.stat().st_mode) == 0o700 and stat.S_IMODE(pem.stat().st_mode) == 0o600
        key, chain = srv._split_pem(pem.read_bytes())
        assert key.strip() == certs["server.key"].read_bytes().strip()
        assert chain.strip() == certs["server.crt"].read_bytes().strip()
        assert Path(os.environ[srv.TLS_CLIENT_CA_ENV]).read_bytes().strip() == certs["ca.crt"].read_bytes().strip()
        assert os.environ[srv.TLS_GRPC_PORT_ENV] == "9443"
        assert os.environ[srv.SETUP_HOOK_ENV] == srv.SETUP_HOOK  # the hook runs beyond loopback too
        srv.tls_environment({}, 9443)  # no TLS in the config: none from the environment either
        assert srv.TLS_PEM_ENV not in os.environ and srv.TLS_GRPC_PORT_ENV not in os.environ
    finally:
        import shutil

        shutil.rmtree(pem.parent, ignore_errors=True)


def test_the_worker_hook_puts_tls_into_haproxys_template_beyond_loopback_too(monkeypatch: pytest.MonkeyPatch):
    import grpc._server
    import grpc.aio._server
    from ray.serve._private import haproxy_templates

    for cls in (grpc.aio._server.Server, grpc._server._Server):  # restored after the test
        for name in ("add_insecure_port", "add_secure_port"):
            monkeypatch.setattr(cls, name, getattr(cls, name))
    monkeypatch.setattr(haproxy_templates, "HAPROXY_CONFIG_TEMPLATE", haproxy_templates.HAPROXY_CONFIG_TEMPLATE)
    monkeypatch.setenv(srv.BIND_HOST_ENV, "0.0.0.0")
    monkeypatch.setenv(srv.TLS_PEM_ENV, "/x/server.pem")
    monkeypatch.delenv(srv.TLS_CLIENT_CA_ENV, raising=False)
    monkeypatch.delenv(srv.TLS_GRPC_PORT_ENV, raising=False)
    srv.worker_setup()
    template = haproxy_templates.HAPROXY_CONFIG_TEMPLATE
    assert template.count(" ssl crt /x/server.pem alpn ") == 2
    assert "bind *:{{ config.stats_port }}" in template  # not on loopback: the stats page binds as Serve has it


def test_a_client_certificate_needs_its_key(certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    from serving.client import open_channel

    for name in ("ENERGYOPT_CA", "ENERGYOPT_CLIENT_CERT", "ENERGYOPT_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="needs both cert and key"):
        open_channel("127.0.0.1:1", cert=certs["client.crt"])
    monkeypatch.setenv("ENERGYOPT_CLIENT_CERT", str(certs["client.crt"]))
    monkeypatch.setenv("ENERGYOPT_CLIENT_KEY", str(certs["client.key"]))
    open_channel("127.0.0.1:1", ca=certs["ca.crt"]).close()
    monkeypatch.delenv("ENERGYOPT_CLIENT_KEY")
    from typer.testing import CliRunner

    from energyopt.cli import app

    result = CliRunner().invoke(app, ["forecasts", "--server", "127.0.0.1:1", "--region", "SYN",
                                      "--client-cert", str(certs["client.crt"])])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "needs both cert and key" in output and "Traceback" not in output, output


# ---------------------------------------------------------------------------------------------- real services


def tls_service(root: Path, certs: dict[str, Path], bundle: Path, data: Path, *, mutual: bool,
                haproxy: bool = True):
    """A service (not started) serving with the test certificate (`mutual`: client certificates required),
    an API key file holding key 'reader'."""
    from servers import server_process

    keys = root / "keys.json"
    token = auth.create_key(keys, "reader", "read")
    args = {"store": str(root / "store.db"), "data": str(data), "region": "SYN", "api_keys": str(keys)}
    server = server_process(root, model=bundle, args=args, replicas=1)
    server.command += ["--tls-cert", str(certs["server.crt"]), "--tls-key", str(certs["server.key"])]
    server.command += ["--tls-client-ca", str(certs["ca.crt"])] if mutual else []
    server.command += [] if haproxy else ["--no-haproxy"]
    server.token = token
    return server


def https(server, path: str, *, token: str | None = None, client: dict[str, Path] | None = None) -> int:
    """Status of GET `path` over HTTPS verified against the test CA (with the client certificate of `client`)."""
    context = ssl.create_default_context(cafile=str((client or server.certs)["ca.crt"]))
    if client is not None:
        context.load_cert_chain(client["client.crt"], client["client.key"])
    request = urllib.request.Request(f"https://localhost:{server.http_port}{path}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def grpc_client(server, *, token: str | None = "", timeout: float = 30, **tls):
    from serving.client import ForecastClient

    return ForecastClient(f"127.0.0.1:{server.grpc_port}", token=token, retries=1, timeout=timeout, **tls)


def wait_ready(server, **tls) -> None:
    """Until the service answers over TLS (`tls`: the client's files): its first calls after READY can wait on
    HAProxy's first health checks of the replicas, slow on 2 busy cores."""
    with grpc_client(server, token=server.token, **tls) as c:
        assert c.wait_ready(timeout=120).name == "tiny-lstm"


def assert_plaintext_refused(server) -> None:
    from serving.client import ForecastError

    with grpc_client(server, token=server.token, tls=False, timeout=10) as c, pytest.raises(ForecastError):
        c.model_info()
    with pytest.raises((OSError, http.client.HTTPException)):  # plain HTTP is not answered
        urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/healthz", timeout=10).read()


def assert_client_certificate_required(server, certs: dict[str, Path]) -> None:
    from serving.client import ForecastError

    wait_ready(server, ca=certs["ca.crt"], cert=certs["client.crt"], key=certs["client.key"])
    with grpc_client(server, token=server.token, ca=certs["ca.crt"], timeout=10) as c, \
            pytest.raises(ForecastError) as exc:
        c.model_info()
    assert exc.value.code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises((OSError, http.client.HTTPException)):  # ssl.SSLError, a reset: the handshake is refused
        https(server, "/healthz")
    with grpc_client(server, token=server.token, ca=certs["ca.crt"], cert=certs["client.crt"],
                     key=certs["client.key"]) as c:
        assert c.health() == "SERVING"
        assert len(c.forecast_region("SYN", 6).zones) == 3
    assert https(server, "/healthz", client=certs) == 200
    assert https(server, "/v1/zones", client=certs) == 401
    assert https(server, "/v1/zones", token=server.token, client=certs) == 200


def haproxy_config(server) -> str:
    from servers import _processes

    procs = _processes(server.proc.pid, str(server.ray_tmp))
    return next(Path(a).read_text() for pid, cmd in procs if "haproxy" in cmd.split()[0]
                for a in Path(f"/proc/{pid}/cmdline").read_text().split("\0") if a.endswith(".cfg"))


def test_haproxy_serves_https_and_grpc_over_tls(tmp_path: Path, certs: dict[str, Path], tiny_bundle_dir: Path,
                                                synthetic_csv: Path):
    from servers import running

    from serving.client import ForecastError

    server = tls_service(tmp_path, certs, tiny_bundle_dir, synthetic_csv, mutual=False)
    server.certs = certs
    with running(server):
        config = haproxy_config(server)
        assert config.count(" ssl crt ") == 2 and "verify required" not in config, config
        wait_ready(server, ca=certs["ca.crt"])
        with grpc_client(server, ca=certs["ca.crt"]) as c:
            assert c.health() == "SERVING"
            with pytest.raises(ForecastError) as exc:  # keys are still checked
                c.model_info()
            assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED
        with grpc_client(server, token=server.token, ca=certs["ca.crt"]) as c:
            assert len(c.forecast_region("SYN", 6).zones) == 3
        assert https(server, "/healthz") == 200
        assert https(server, "/v1/zones") == 401
        assert https(server, "/v1/zones", token=server.token) == 200
        assert_plaintext_refused(server)
        pem = Path(next(line.split()[line.split().index("crt") + 1] for line in config.splitlines()
                        if " ssl crt " in line))
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600


def test_haproxy_with_a_client_ca_requires_client_certificates(tmp_path: Path, certs: dict[str, Path],
                                                               tiny_bundle_dir: Path, synthetic_csv: Path):
    from servers import running

    server = tls_service(tmp_path, certs, tiny_bundle_dir, synthetic_csv, mutual=True)
    server.certs = certs
    with running(server):
        assert haproxy_config(server).count(" verify required") == 2
        assert_client_certificate_required(server, certs)


def test_serves_python_proxies_serve_https_and_grpc_over_mtls(tmp_path: Path, certs: dict[str, Path],
                                                              tiny_bundle_dir: Path, synthetic_csv: Path):
    """--no-haproxy: uvicorn (HTTP) and Serve's gRPC proxy, its port bound with add_secure_port."""
    from servers import running

    server = tls_service(tmp_path, certs, tiny_bundle_dir, synthetic_csv, mutual=True, haproxy=False)
    server.certs = certs
    with running(server):
        assert_client_certificate_required(server, certs)
        assert_plaintext_refused(server)
