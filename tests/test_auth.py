"""API keys, roles and per-key limits (serving/auth.py): the key file and the checks in process, then a real
service started with a key file (its own Ray, tests/servers.py), over gRPC and HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pandas as pd
import pytest

from serving import auth
from serving.auth import AuthError, Gate, KeyRing, Limiter, RateLimitError

# ---------------------------------------------------------------------------------------------- in process


def test_the_key_file_holds_hashes_and_a_created_key_authenticates(tmp_path: Path):
    path = tmp_path / "keys.json"
    token = auth.create_key(path, "feed", "write")
    assert token.startswith("eo_") and len(token) >= 40
    text = path.read_text()
    assert token not in text and auth.hash_token(token) in text
    assert path.stat().st_mode & 0o077 == 0  # the owner's only
    [key] = auth.read_keys(path)
    assert (key.name, key.role) == ("feed", "write") and key.created
    assert KeyRing(path).lookup(token) == key
    assert KeyRing(path).lookup(token + "x") is None
    with pytest.raises(AuthError, match="exists"):
        auth.create_key(path, "feed", "read")
    with pytest.raises(AuthError, match="roles are"):
        auth.create_key(path, "other", "admin")


def test_roles_include_the_ones_below(tmp_path: Path):
    path = tmp_path / "keys.json"
    tokens = {role: auth.create_key(path, role, role) for role in auth.ROLES}
    gate = Gate(KeyRing(path))

    def code(method: str, role: str) -> grpc.StatusCode:
        try:
            gate.admit(method, f"Bearer {tokens[role]}")
        except auth.ApiError as err:
            return err.code
        return grpc.StatusCode.OK

    denied = grpc.StatusCode.PERMISSION_DENIED
    assert [code("ListZones", r) for r in auth.ROLES] == [grpc.StatusCode.OK] * 3
    assert [code("IngestReadings", r) for r in auth.ROLES] == [denied, grpc.StatusCode.OK, grpc.StatusCode.OK]
    assert [code("OptimizeDispatch", r) for r in auth.ROLES] == [denied, denied, grpc.StatusCode.OK]
    assert code("SomethingNew", "write") == denied  # an RPC nobody classified needs operate
    with pytest.raises(auth.ApiError, match="IngestReadings needs role 'write'; key 'read' has role 'read'"):
        gate.admit("IngestReadings", f"Bearer {tokens['read']}")
    with pytest.raises(auth.ApiError, match="missing API key: send 'authorization: Bearer <key>'"):
        gate.admit("ListZones", None)
    with pytest.raises(auth.ApiError, match="missing API key"):
        gate.admit("ListZones", f"Basic {tokens['read']}")
    with pytest.raises(auth.ApiError, match="^unknown API key$"):
        gate.admit("ListZones", "Bearer eo_nope")
    assert gate.admit("Check", None) is None  # health checks are open
    assert Gate(None).admit("IngestReadings", None) is None  # no key file: no authentication


def test_a_revoked_key_is_refused_once_the_file_changed(tmp_path: Path):
    path = tmp_path / "keys.json"
    token = auth.create_key(path, "ops", "operate")
    ring = KeyRing(path, reload_s=0.0)
    assert ring.lookup(token) is not None
    auth.revoke_key(path, "ops")
    assert ring.lookup(token) is None
    path.write_text("{not json")  # a broken file (a hand edit): the keys read before stay
    token2 = auth.create_key(tmp_path / "other.json", "x", "read")
    assert ring.lookup(token2) is None and len(ring) == 0
    with pytest.raises(AuthError, match="no key file"):
        KeyRing(tmp_path / "missing.json")


def test_every_rpc_and_route_has_a_decided_role():
    """No RPC of the protos (and so no route mirroring one) falls to the 'operate' default unnoticed."""
    from serving.app import http_app
    from serving.metrics import mirrored_rpc, rpc_names

    assert not rpc_names() - set(auth.METHOD_ROLES)
    for route in http_app.routes:
        endpoint = getattr(route, "endpoint", None)
        path = getattr(route, "path", "")
        if endpoint is None or not path.startswith("/v1/"):
            continue
        assert mirrored_rpc(endpoint.__wrapped__) in auth.METHOD_ROLES, path


def test_the_limiter_is_a_token_bucket_per_key_with_a_concurrency_cap():
    limiter = Limiter(rate=10, burst=3, max_concurrent=2)
    releases = [limiter.acquire("a"), limiter.acquire("a")]
    with pytest.raises(RateLimitError, match="concurrency limit") as exc:
        limiter.acquire("a")
    assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and exc.value.http_status == 429
    releases[0]()
    with pytest.raises(RateLimitError, match=r"rate limit: key 'a' is over 10 requests/s .* retry in 0\.\d+ s") as exc:
        limiter.acquire("a")  # the 4th in a burst of 3
    assert 0 < exc.value.retry_after_s <= 0.1
    limiter.acquire("b")()  # another key has buckets of its own
    time.sleep(0.25)
    limiter.acquire("a")()


def test_an_error_response_of_a_rate_limit_is_429_with_retry_after():
    from serving.app import error_response

    response = error_response(RateLimitError("slow down", 1.2))
    assert response.status_code == 429 and response.headers["retry-after"] == "2"
    response = error_response(auth.ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too big"))
    assert response.status_code == 413 and "retry-after" not in response.headers
    response = error_response(auth.ApiError(grpc.StatusCode.UNAUTHENTICATED, auth.MISSING))
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert error_response(auth.ApiError(grpc.StatusCode.PERMISSION_DENIED, "no")).status_code == 403


def test_serving_beyond_loopback_needs_a_key_file(tmp_path: Path):
    from serving.server import load_config

    assert "authentication: off (loopback only" in auth.startup_check(load_config())
    with pytest.raises(AuthError, match="http_options.host is 0.0.0.0, not loopback, and no API key file"):
        auth.startup_check({**load_config(), "http_options": {"host": "0.0.0.0", "port": 8000}})
    path = tmp_path / "keys.json"
    auth.create_key(path, "a", "read")
    auth.create_key(path, "b", "read")
    config = load_config(args={"api_keys": str(path)})
    assert auth.startup_check({**config, "http_options": {"host": "0.0.0.0"}}).startswith(
        f"authentication: on (2 keys, {path})")
    with pytest.raises(AuthError, match="no key file"):
        auth.startup_check(load_config(args={"api_keys": str(tmp_path / "none.json")}))


def test_serve_refuses_to_start_beyond_loopback_without_keys(tmp_path: Path, tiny_bundle_dir: Path):
    import yaml
    from servers import REPO
    from typer.testing import CliRunner

    from energyopt.cli import app
    from serving.server import free_ports

    config = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    config["http_options"]["host"] = "0.0.0.0"
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    ports = [str(p) for p in free_ports(3)]
    result = CliRunner().invoke(app, ["serve", "--config", str(tmp_path / "serve.yaml"), "--model",
                                      str(tiny_bundle_dir), "--grpc-port", ports[0], "--http-port", ports[1],
                                      "--metrics-port", ports[2], "--store", str(tmp_path / "store.db")],
                                catch_exceptions=False)
    message = " ".join(result.stderr.split())  # as rich wrapped it
    assert result.exit_code == 2 and "not loopback, and no API key file is configured" in message


def test_the_keys_command_creates_lists_and_revokes(tmp_path: Path):
    path = tmp_path / "keys.json"

    from typer.testing import CliRunner

    from energyopt.cli import app

    def keys(*argv: str):  # noqa: ANN202
        return CliRunner().invoke(app, ["keys", *argv, "--file", str(path)], catch_exceptions=False)

    created = keys("create", "--name", "ops", "--role", "operate")
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert KeyRing(path).lookup(token).role == "operate" and "shown only now" in created.stderr
    listed = keys("list")
    assert "ops" in listed.stdout and "operate" in listed.stdout and token not in listed.stdout
    assert keys("revoke", "ops").exit_code == 0 and auth.read_keys(path) == []
    refused = keys("revoke", "ops")
    assert refused.exit_code == 2 and "no key named 'ops'" in refused.stderr


def test_clients_send_the_token_given_or_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from serving.client import ForecastClient, ReadingsClient, open_channel

    monkeypatch.delenv("ENERGYOPT_API_KEY", raising=False)
    monkeypatch.delenv("ENERGYOPT_CA", raising=False)
    with ForecastClient("127.0.0.1:1", token="eo_given", application="energyopt") as c:
        assert c._metadata == (("application", "energyopt"), ("authorization", "Bearer eo_given"))
    with ReadingsClient("127.0.0.1:1") as c:
        assert c._metadata is None
    monkeypatch.setenv("ENERGYOPT_API_KEY", "eo_env")
    with ReadingsClient("127.0.0.1:1") as c:
        assert c._metadata == (("authorization", "Bearer eo_env"),)
    with ReadingsClient("127.0.0.1:1", token="") as c:  # "": none, whatever the environment says
        assert c._metadata is None
    with pytest.raises(FileNotFoundError):
        open_channel("127.0.0.1:1", ca=tmp_path / "missing.pem")
    open_channel("127.0.0.1:1", tls=True).close()


# ---------------------------------------------------------------------------------------------- a real service

RATE = 20  # the service's rate_per_key_s and burst: generous for the tests' calls, but not for a burst of 60


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_bundle_dir: Path, synthetic_csv: Path):
    from servers import running, server_process

    root = tmp_path_factory.mktemp("auth")
    keys = root / "keys.json"
    tokens = {name: auth.create_key(keys, name, role) for name, role in
              (("reader", "read"), ("feed", "write"), ("ops", "operate"), ("burst", "read"), ("gone", "write"))}
    args = {"store": str(root / "store.db"), "data": str(synthetic_csv), "region": "SYN", "api_keys": str(keys),
            "rate_per_key_s": RATE, "burst_per_key": RATE}
    server = server_process(root, model=tiny_bundle_dir, args=args, replicas=1)
    with running(server):
        server.tokens, server.keys = tokens, keys
        server.url = f"http://127.0.0.1:{server.http_port}"
        yield server


def http(service, method: str, path: str, token: str | None = None, body: dict | None = None):
    """(status, headers, JSON answer) of an HTTP call to the service."""
    request = urllib.request.Request(service.url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read() or b"null")


def client(service, token: str | None = ""):
    from serving.client import ForecastClient

    return ForecastClient(f"127.0.0.1:{service.grpc_port}", token=token, retries=1, timeout=60)


def readings_client(service, token: str | None = ""):
    from serving.client import ReadingsClient

    return ReadingsClient(f"127.0.0.1:{service.grpc_port}", token=token, retries=1, timeout=60)


def test_no_key_is_unauthenticated_over_grpc_and_401_over_http(service):
    from serving.client import ForecastError

    with client(service) as c, pytest.raises(ForecastError) as exc:
        c.model_info()
    assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert exc.value.message == "missing API key: send 'authorization: Bearer <key>'"
    status, headers, answer = http(service, "GET", "/v1/zones")
    assert (status, answer["code"], headers["WWW-Authenticate"]) == (401, "UNAUTHENTICATED", "Bearer")
    status, _, answer = http(service, "GET", "/v1/zones", token="eo_not-a-key")
    assert (status, answer["message"]) == (401, "unknown API key")


def test_health_checks_and_the_dashboard_page_stay_open(service):
    with client(service) as c:
        assert c.health() == "SERVING"
    assert http(service, "GET", "/healthz")[0] == 200
    with urllib.request.urlopen(service.url + "/", timeout=30) as page:
        assert page.status == 200


def test_a_read_key_reads_but_may_not_ingest_nor_dispatch(service):
    from serving.client import ReadingsError

    token = service.tokens["reader"]
    with client(service, token) as c:
        assert c.model_info().name == "tiny-lstm"
        assert len(c.forecast_region("SYN", 6).zones) == 3
    status, _, answer = http(service, "GET", "/v1/zones", token=token)
    assert status == 200 and len(answer["zones"]) == 3
    status, _, answer = http(service, "POST", "/v1/forecast/region", token=token, body={"region": "SYN", "horizon": 6})
    assert status == 200 and len(answer["zones"]) == 3  # a route with a Request of its own (the JSON body)
    with readings_client(service, token) as r, pytest.raises(ReadingsError) as exc:
        r.ingest([("Z000", pd.Timestamp.now("UTC").floor("h") - pd.Timedelta(days=3), 1.0)])
    assert exc.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert exc.value.message == "IngestReadings needs role 'write'; key 'reader' has role 'read'"
    status, _, answer = http(service, "POST", "/v1/readings", token=token, body={"readings": []})
    assert (status, answer["code"]) == (403, "PERMISSION_DENIED")
    status, _, answer = http(service, "POST", "/v1/dispatch", token=service.tokens["feed"], body={})
    assert status == 403 and "needs role 'operate'; key 'feed' has role 'write'" in answer["message"]
    status, _, answer = http(service, "POST", "/v1/dispatch", token=service.tokens["ops"], body={})
    assert (status, answer["code"]) == (400, "INVALID_ARGUMENT")  # admitted: the (empty) request is what is wrong


def test_a_write_key_ingests_and_streams_and_a_stream_without_one_is_refused(service):
    from serving.client import ReadingsError, ingest_request

    token = service.tokens["feed"]
    hour = pd.Timestamp.now("UTC").floor("h") - pd.Timedelta(days=2)
    with readings_client(service, token) as r:
        ack = r.ingest([("Z000", hour, 1234.0)])
        assert ack.received == 1 and not ack.rejected, ack
        acks = list(r.stream([ingest_request([("Z001", hour + pd.Timedelta(hours=h), 1000.0 + h)]) for h in range(3)]))
        assert [(a.received, len(a.rejected)) for a in acks] == [(1, 0)] * 3
    with readings_client(service) as r, pytest.raises(ReadingsError) as exc:
        list(r.stream([ingest_request([("Z001", hour, 1.0)])]))
    assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_a_key_over_its_rate_gets_429_with_retry_after(service):
    answers = [http(service, "GET", "/v1/zones", token=service.tokens["burst"]) for _ in range(3 * RATE)]
    limited = [(h, a) for s, h, a in answers if s == 429]
    assert limited, [s for s, _, _ in answers]
    headers, answer = limited[0]
    assert answer["code"] == "RESOURCE_EXHAUSTED" and "retry in" in answer["message"]
    assert int(headers["Retry-After"]) >= 1
    assert http(service, "GET", "/v1/zones", token=service.tokens["reader"])[0] == 200  # other keys unaffected


def test_the_dashboard_asks_for_a_key_and_uses_the_one_entered(service):
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright drives the browser (the dev extra)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page()
            page.goto(service.url + "/?poll=500")
            status = page.locator("#status")
            page.wait_for_function("document.querySelector('#status').dataset.state === 'error'", timeout=30_000)
            assert "needs an API key" in status.text_content()
            page.fill("#api-key", service.tokens["reader"])
            page.dispatch_event("#api-key", "change")
            page.wait_for_function("document.querySelector('#status').dataset.state === 'ok'", timeout=30_000)
            assert page.evaluate("sessionStorage.getItem('energyopt.apiKey')") == service.tokens["reader"]
        finally:
            browser.close()


def test_a_revoked_key_is_refused_without_a_restart(service):
    from serving.client import ReadingsError

    token = service.tokens["gone"]
    with readings_client(service, token) as r:
        assert r.list_zones().zones
        auth.revoke_key(service.keys, "gone")
        deadline = time.monotonic() + 15
        while True:
            try:
                r.list_zones()
            except ReadingsError as err:
                assert (err.code, err.message) == (grpc.StatusCode.UNAUTHENTICATED, "unknown API key")
                break
            assert time.monotonic() < deadline, "the revoked key still works"
            time.sleep(0.3)
    assert http(service, "GET", "/v1/zones", token=token)[0] == 401


def test_a_call_without_a_key_is_refused_on_every_port_of_the_service(service):
    """Every TCP port the service's processes listen on (the gRPC and HTTP ingress, the replica's own
    direct-ingress servers, Serve's fallback proxies, Ray's own services): an API call without a key is answered
    nowhere; the ports that serve the API answer UNAUTHENTICATED (HTTP 401), the others do not speak it."""
    import http.client

    from servers import _processes

    from serving.api.energyopt.v1 import forecast_pb2 as pb
    from serving.api.energyopt.v1 import forecast_pb2_grpc as pb_grpc
    from serving.server import listeners

    procs = dict(_processes(service.proc.pid, str(service.ray_tmp)))
    ports = sorted({port for _, _, port in listeners(set(procs))})
    grpc_answers: dict[int, str] = {}
    http_answers: dict[int, tuple[int | str, str]] = {}
    for port in ports:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:  # the `application` metadata routes a call on Serve's proxies
                pb_grpc.ForecastServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=5,
                                                                  metadata=[("application", "energyopt")])
                grpc_answers[port] = "OK"
            except grpc.RpcError as err:
                grpc_answers[port] = err.code().name
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/zones", timeout=5) as response:
                http_answers[port] = (response.status, response.headers.get("content-type", ""))
        except urllib.error.HTTPError as err:
            http_answers[port] = (err.code, err.headers.get("content-type", ""))
        except (OSError, http.client.HTTPException) as err:  # not an HTTP/1.1 server (gRPC, Ray's own)
            http_answers[port] = (type(err).__name__, "")
    answers = "\n".join(f"  {p}: gRPC {grpc_answers[p]}, HTTP {http_answers[p]}" for p in ports)
    assert "OK" not in grpc_answers.values(), answers
    # a 200 elsewhere is not the API: Ray's Prometheus export answers its metrics on any path (text/plain)
    assert not any(status == 200 and "json" in kind for status, kind in http_answers.values()), answers
    unauthenticated = {p for p, code in grpc_answers.items() if code == "UNAUTHENTICATED"}
    # the gRPC ingress (HAProxy), the replica's direct-ingress gRPC server and Serve's fallback gRPC proxy
    assert service.grpc_port in unauthenticated and len(unauthenticated) >= 3, answers
    refused_http = {p for p, (status, _) in http_answers.items() if status == 401}
    assert service.http_port in refused_http and len(refused_http) >= 2, answers
