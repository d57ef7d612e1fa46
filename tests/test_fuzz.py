"""Property-based fuzzing (Hypothesis) of every RPC, every HTTP route and the CLI's file inputs.

A service of its own (tests/servers.py: subprocess, own Ray, own store), so that fuzzed readings and zones
never reach the other tests' service: the tiny forecaster and anomaly model on the synthetic zones (region
"SYN"). Every answer must be a documented status with a one-line message that shows no internals, a success
must hold only finite numbers, and the service must answer normally afterwards. Requests per RPC and route:
ENERGYOPT_FUZZ_EXAMPLES (default 25 here; benchmarks/resilience.py sends 10,000 of each).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ holds the shared strategies
import fuzzing  # noqa: E402
from servers import running, server_process  # noqa: E402

from serving.api.energyopt.v1 import forecast_pb2 as pb  # noqa: E402
from serving.api.energyopt.v1 import readings_pb2 as rpb  # noqa: E402
from serving.api.energyopt.v1 import readings_pb2_grpc as rpb_grpc  # noqa: E402

EXAMPLES = int(os.environ.get("ENERGYOPT_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
SEEDS = fuzzing.valid_requests()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_bundle_dir: Path, tiny_anomaly_bundle_dir: Path,
           synthetic_csv: Path) -> Iterator:
    root = tmp_path_factory.mktemp("fuzz")
    service = server_process(root, model=tiny_bundle_dir, replicas=1, args={
        "store": str(root / "store.db"), "data": str(synthetic_csv), "region": "SYN",
        "regions": {"PAIR": ["Z000", "Z001"]}})
    service.command += ["--user-config", json.dumps({"anomaly_model": str(tiny_anomaly_bundle_dir)})]
    with running(service):
        yield service


def test_every_seed_request_is_answered(server) -> None:
    """The seeds of the mutated requests succeed, so the mutations start from the inside of the API."""
    answers = {rpc.name: fuzzing.call_rpc(server.channel, rpc, SEEDS[rpc.name])[:2] for rpc in fuzzing.rpcs()}
    assert {name: f"{code.name}: {message}" for name, (code, message) in answers.items()
            if code != grpc.StatusCode.OK} == {}


@pytest.mark.parametrize("rpc", fuzzing.rpcs(), ids=lambda rpc: rpc.name)
def test_generated_requests_get_documented_answers(server, rpc: fuzzing.Rpc) -> None:
    @FUZZ
    @given(request=fuzzing.requests_for(rpc.name, SEEDS[rpc.name]))
    def check(request) -> None:
        code, message, response = fuzzing.call_rpc(server.channel, rpc, request)
        if code == grpc.StatusCode.OK:
            bad = list(fuzzing.non_finite(response))
            assert not bad, f"{rpc.name} succeeded with non-finite values at {bad[:5]}"
        else:
            problem = fuzzing.problem_with_status(code, message, request)
            assert problem is None, f"{rpc.name}: {problem}"

    check()


@pytest.mark.parametrize("route", fuzzing.ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_generated_http_requests_get_documented_answers(server, route: fuzzing.Route) -> None:
    caller = fuzzing.HttpCaller(server.http_port)

    @FUZZ
    @given(call=fuzzing.http_requests(route, SEEDS[route.rpc]))
    def check(call: tuple[str, bytes | None]) -> None:
        path, body = call
        problem = caller.problem(route.method, path, body, fuzzing.response_type(route))
        assert problem is None, f"{route.method} {path[:200]}: {problem}"

    try:
        check()
    finally:
        caller.close()


@FUZZ
@given(batches=st.lists(fuzzing.requests_for("IngestReadings", SEEDS["IngestReadings"]), min_size=1, max_size=4))
def test_generated_streams_get_documented_answers(server, batches: list[rpb.IngestReadingsRequest]) -> None:
    stub = rpb_grpc.ReadingsServiceStub(server.channel)
    acks = 0
    try:
        for ack in stub.StreamReadings(iter(batches), timeout=60):
            acks += 1
            assert ack.batch == acks - 1
    except grpc.RpcError as err:
        problem = fuzzing.problem_with_status(err.code(), err.details() or "")
        assert problem is None, f"StreamReadings: {problem}"
    else:
        assert acks == len(batches)


def test_the_service_answers_normally_afterwards(server) -> None:
    # named to run last in file order; with pytest-randomly it may run earlier, and then it checks the start
    health = health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    rpc = next(r for r in fuzzing.rpcs() if r.name == "ForecastRegion")
    code, message, response = fuzzing.call_rpc(server.channel, rpc, pb.ForecastRegionRequest(region="SYN", horizon=24))
    assert code == grpc.StatusCode.OK, message
    assert [z.name for z in response.zones] == ["Z000", "Z001", "Z002"] and len(response.total.point) == 24
    assert server.proc.poll() is None, "the server process died"


# ------------------------------------------------------------------------------------------------ CLI

_BAD_FILES = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"", b"zone,timestamp,load_mw\n", b"zone,timestamp,load_mw\nA,not-a-time,1\n",
                     b"zone,timestamp,load_mw\nA,2021-01-01 00:00,NaN\nA,2021-01-01 01:00,inf\n",
                     b"a;b;c\n1;2;3\n", b"PAR1\x00\x00garbage", b"zone,timestamp,load_mw\n" + b"A,2021-01-01,1e400\n",
                     b"Datetime,AEP_MW\n2021-01-01 00:00:00,-5\n", b"\xef\xbb\xbf\xff\xfe\x00"]),
    st.lists(st.tuples(st.sampled_from(["A", "B", "", "Z000"]), st.sampled_from(
        ["2021-01-01 00:00", "2021-01-01 00:00", "2021-03-14 02:00", "x", ""]),
        st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4))), max_size=30).map(
        lambda rows: ("zone,timestamp,load_mw\n" + "".join(f"{z},{t},{v}\n" for z, t, v in rows)).encode()),
)

# Each command with a file input, run on a bad file: (argv with {file}, {out} and {model} filled in).
CLI_COMMANDS = {
    "train": ["train", "--model", "seasonal_naive", "--data", "{file}", "--out", "{out}"],
    "evaluate": ["evaluate", "--model", "{model}", "--data", "{file}"],
    "forecast": ["forecast", "--model", "{model}", "--data", "{file}"],
    "detect": ["detect", "--model", "{anomaly}", "--data", "{file}"],
    "ingest": ["ingest", "{file}", "--store", "{out}/store.db"],
    "data inspect": ["data", "inspect", "{file}"],
    "optimize": ["optimize", "--sites", "{file}", "--out", "{out}/plan.parquet"],
    "score": ["score", "--model", "{model}", "--input", "{file}", "--output", "{out}/scored"],
    "forecast (bad bundle)": ["forecast", "--model", "{file_dir}"],
}


@pytest.mark.parametrize("command", list(CLI_COMMANDS), ids=str)
def test_cli_commands_refuse_bad_files_in_one_line(command: str, tmp_path_factory: pytest.TempPathFactory,
                                                   tiny_bundle_dir: Path, tiny_anomaly_bundle_dir: Path) -> None:
    from typer.testing import CliRunner

    from energyopt.cli import app

    runner = CliRunner()

    @settings(FUZZ, max_examples=max(5, EXAMPLES // 2))
    @given(content=_BAD_FILES, suffix=st.sampled_from([".csv", ".parquet"]))
    def check(content: bytes, suffix: str) -> None:
        root = tmp_path_factory.mktemp("cli")
        file = root / f"input{suffix}"
        file.write_bytes(content)
        bundle = root / "bundle"  # a bundle directory whose every file is the bad content
        bundle.mkdir()
        for name in ("config.json", "model.safetensors", "metrics.json"):
            (bundle / name).write_bytes(content)
        argv = [a.format(file=file, out=root / "out", model=tiny_bundle_dir, anomaly=tiny_anomaly_bundle_dir,
                         file_dir=bundle) for a in CLI_COMMANDS[command]]
        result = runner.invoke(app, argv, catch_exceptions=True)
        if result.exit_code == 0:  # a file that is bad in ways the command repairs (the report says so)
            return
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"{command} raised {type(result.exception).__name__}: {result.exception}")
        assert result.exit_code == 2, f"{command}: exit {result.exit_code}: {result.output[-500:]}"
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in result.output, result.output[-1000:]

    check()
