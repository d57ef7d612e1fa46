"""Champion/challenger retraining (training/retrain.py, models/decisions.py, `energyopt retrain`) and the
service following its promotions (serving/app.py).

The store's readings become the training table; decisions are stored in SQLite and PostgreSQL; a replica
(in this process) follows promotions, lets an operator's user_config change win over older ones and keeps
serving when a promoted bundle is broken; then, on the session's Serve application, a champion trained on
a deliberately wrong year loses and is replaced without a failed request, and a worse challenger is not
promoted. The Serve tests put the application back on its original bundle.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pandas as pd
import pytest
from typer.testing import CliRunner

from energyopt.cli import app
from models.decisions import (
    Decision,
    Promotion,
    follow,
    latest_promotion,
    list_decisions,
    promotions,
    record_decision,
    record_promotion,
)
from models.store import Store, ZoneSpec
from serving.api.energyopt.v1 import forecast_pb2 as pb

if TYPE_CHECKING:
    from conftest import ServeApp

runner = CliRunner()


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def copy_bundle(src: Path, dst: Path, suffix: str) -> str:
    """A copy of the bundle `src` at `dst` with its version + `suffix` (returned)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["version"] += suffix
    (dst / "config.json").write_text(json.dumps(config))
    from models.bundle import write_checksums
    write_checksums(dst)  # the edited config.json is the copy's own
    return config["version"]


def decision(champion: str, challenger: str, promoted: bool = True, **changes: object) -> Decision:
    fields = dict(champion_name="m", champion_version="v1", champion_path=champion, challenger_name="m",
                  challenger_version="v2", challenger_path=challenger, metric="mae", champion_score=10.0,
                  challenger_score=8.0, margin=0.02, promoted=promoted, backtest_start=1_600_000_000,
                  backtest_end=1_602_419_200, detail={"summary": {"champion": {"mae": 10.0}}})
    return Decision(**{**fields, **changes})


@pytest.fixture(scope="module")
def wrong_year_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A deliberately wrong year: 400 days of another grid's load (another seed), noisy, 12 hours off."""
    from training.synthetic import synthetic_load

    table = synthetic_load(n_zones=3, hours=24 * 400, start="2015-01-01", seed=99, noise=0.6)
    table["timestamp"] += pd.Timedelta(hours=12)
    path = tmp_path_factory.mktemp("wrong") / "wrong-year.csv"
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def wrong_champion(tmp_path_factory: pytest.TempPathFactory, wrong_year_csv: Path, tiny_config) -> Path:
    """The tiny forecaster, trained on the wrong year."""
    from training.pipeline import train

    out = tmp_path_factory.mktemp("bundles") / "wrong-year"
    train(tiny_config, wrong_year_csv, out, progress=False, log=lambda _: None)
    return out


# ---------------------------------------------------------------------------------------------- the data

def test_store_table_is_the_long_table_on_each_zones_wall_clock(tmp_path: Path):
    from training.retrain import store_table

    store = Store.open(tmp_path / "store.db")
    # Eastern time across the fall-back night (01:00 twice, naive: the first is daylight time), hourly
    local = pd.date_range("2021-11-06 00:00", "2021-11-07 23:00", freq="h")
    stamps = list(local[:26]) + [local[25]] + list(local[26:])  # 2021-11-07 01:00 twice
    values = [1000.0 + i for i in range(len(stamps))]
    values[26] = values[25] + 10  # the second (standard time) 01:00
    east = pd.DataFrame({"zone": "E1", "timestamp": stamps, "load_mw": values})
    store.ingest_frame(east, register=[ZoneSpec("E1", "EAST", 3600, "America/New_York")])
    # a 15-minute UTC zone: 3 hours, the last one missing a reading
    quarter = pd.date_range("2021-11-06 00:00", periods=12, freq="15min")
    q = pd.DataFrame({"zone": "Q1", "timestamp": quarter, "load_mw": [100.0 + i for i in range(12)]}).drop(index=10)
    store.ingest_frame(q, register=[ZoneSpec("Q1", "EAST-Q", 900, "UTC")])

    table = store_table(store)
    e1 = table[table.zone == "E1"].set_index("timestamp")["load_mw"]
    assert list(e1.index) == list(local)  # one row per wall-clock hour
    assert e1[pd.Timestamp("2021-11-07 01:00")] == pytest.approx(values[25] + 5)  # the two hours' mean
    assert e1[pd.Timestamp("2021-11-07 05:00")] == values[30]
    q1 = table[table.zone == "Q1"]
    assert list(q1.timestamp) == list(quarter[[0, 4]]) and list(q1.load_mw) == [101.5, 105.5]
    assert list(table.columns) == ["zone", "timestamp", "load_mw"]
    assert store_table(store, ["Q1"]).zone.unique().tolist() == ["Q1"]
    with pytest.raises(ValueError, match="not in the store"):
        store_table(store, ["NOPE"])
    store.close()


# ---------------------------------------------------------------------------------------------- decisions

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_decisions_are_stored_listed_and_promotions_read(backend: str, request: pytest.FixtureRequest,
                                                         tmp_path: Path, tiny_bundle_dir: Path):
    url = request.getfixturevalue("postgres_db") if backend == "postgresql" else tmp_path / "store.db"
    store = Store.open(url)
    try:
        assert list_decisions(store) == [] and latest_promotion(store) is None and promotions(store) == []
        kept = record_decision(store, decision("/a", "/b", promoted=False, challenger_score=9.9))
        promoted = record_decision(store, decision("/a", "/c"))
        manual = record_promotion(store, tiny_bundle_dir, note="roll back")
        assert kept.id < promoted.id < manual.id and kept.decided_at > 0

        listed = list_decisions(store)
        assert [d.id for d in listed] == [manual.id, promoted.id, kept.id]  # newest first
        assert listed[1] == promoted and listed[2] == kept  # every field round-trips, detail JSON included
        assert listed[2].promoted is False and listed[2].challenger_score == 9.9
        assert listed[0].metric == "manual" and listed[0].champion_path == ""
        assert listed[0].challenger_path == str(tiny_bundle_dir.resolve()) and listed[0].detail == {"note": "roll back"}
        assert [d.id for d in list_decisions(store, limit=1)] == [manual.id]

        newest = latest_promotion(store)
        assert newest is not None and (newest.id, newest.challenger_path) == (manual.id, str(tiny_bundle_dir.resolve()))
        assert [p.id for p in promotions(store)] == [promoted.id, manual.id]  # oldest first, promoted only
        assert [p.id for p in promotions(store, after=promoted.id)] == [manual.id]
        with pytest.raises(ValueError, match="no model bundle"):
            record_promotion(store, tmp_path / "missing")
        assert len(list_decisions(store)) == 3
    finally:
        store.close()


def test_promotions_replace_their_champion_or_every_model():
    def p(i: int, champion: str, challenger: str, version: str = "") -> Promotion:
        return Promotion(i, champion, "m" if champion else "", version, challenger, "m", f"v-{challenger}")

    chain = [p(1, "/x", "/y"), p(2, "/y", "/w"), p(3, "/other", "/z"), p(4, "/copy-of-w", "/u", version="v-/w")]
    assert follow(chain, "/x") == "/u"  # x -> y -> w -> (the same bundle as w, elsewhere) -> u
    assert follow(chain, "/z") == "/z"  # a model configured after its promotions: the operator's choice
    assert follow(chain[:3], "/q") == "/q"
    assert follow([*chain, p(5, "", "/r")], "/q") == "/r"  # no champion: for every replica
    assert p(1, "/x", "/y").replaces("/elsewhere", "m", "") is False  # no version: the path must match


# ---------------------------------------------------------------------------------------------- a replica

def test_a_replica_follows_promotions_and_an_operator_change_wins(tmp_path: Path, tiny_bundle_dir: Path):
    """The Forecaster replica's own code, in this process (no Serve): the swap, the polling task, ListModelDecisions."""
    from serving.app import Forecaster
    from serving.engine import ApiError

    tiny = str(tiny_bundle_dir.resolve())
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    version_a, version_b, version_c = (copy_bundle(tiny_bundle_dir, path, f"-{path.name}") for path in (a, b, c))
    store_path = tmp_path / "store.db"
    store = Store.open(store_path)
    first = record_decision(store, decision(tiny, str(a)))

    async def scenario() -> None:
        replica = Forecaster.func_or_class.__bases__[0]({"store": str(store_path), "seed": False})  # no ASGI wrapper
        replica.PROMOTION_POLL_S = 0.05

        async def settle(done=lambda: True) -> None:  # noqa: ANN001 - until done() (a swap), or ~10 polls
            deadline = time.monotonic() + 30
            await asyncio.sleep(0.5)
            while not done():
                assert time.monotonic() < deadline, "the replica did not follow"
                await asyncio.sleep(0.05)

        await replica.reconfigure({"model": tiny})  # a starting replica follows the promotions from its model
        assert (replica.engine.bundle_path, replica.engine.bundle.version) == (str(a), version_a)
        assert replica._promotion_id == first.id and not replica.swap_error

        record_decision(store, decision(str(a), str(b)))  # promoted while running: swapped by the polling task
        await settle(lambda: replica.engine.bundle.version == version_b)
        assert replica.engine.bundle.version == version_b
        info = await replica.GetModelInfo(pb.GetModelInfoRequest())
        assert (info.version, info.bundle_path, info.swap_error) == (version_b, Path(b).name, "")

        record_decision(store, decision("/another/model", str(a)))  # replaces a model this replica does not serve
        record_decision(store, decision(str(b), str(a), promoted=False))  # not promoted
        await settle()
        assert replica.engine.bundle.version == version_b

        await replica.reconfigure({"model": str(c)})  # the operator's change wins over the promotions before it
        await settle()
        assert replica.engine.bundle.version == version_c and replica._promotion_id == latest_promotion(store).id

        broken = record_decision(store, decision(str(c), str(tmp_path / "missing")))  # cannot be loaded
        await settle(lambda: bool(replica.swap_error))
        info = await replica.GetModelInfo(pb.GetModelInfoRequest())
        assert info.version == version_c and f"promotion {broken.id}: no model bundle" in info.swap_error

        listed = await replica.ListModelDecisions(pb.ListModelDecisionsRequest(limit=2))
        assert [d.challenger_path for d in listed.decisions] == ["missing", a.name]  # names: no server paths
        assert [d.promoted for d in listed.decisions] == [True, False]
        d = listed.decisions[0]
        assert (d.metric, d.champion_score, d.challenger_score, d.margin, d.promoted) == ("mae", 10.0, 8.0, 0.02, True)
        assert (d.champion.version, d.champion_path, d.backtest_start) == ("v1", c.name, "2020-09-13T12:26:40+00:00")
        assert d.decided_at.endswith("+00:00")
        assert len((await replica.ListModelDecisions(pb.ListModelDecisionsRequest())).decisions) == 5
        with pytest.raises(ApiError) as err:
            await replica.ListModelDecisions(pb.ListModelDecisionsRequest(limit=1001))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        replica._promotions.cancel()
        replica.store.close()

        # replicas starting now: on tiny, the chain of promotions (tiny -> a -> b); on c, its promotion to a
        # broken bundle, so c itself, saying why
        for model, serves, error in ((tiny, str(b), ""), (str(c), str(c), f"promotion {broken.id} (")):
            late = Forecaster.func_or_class.__bases__[0]({"store": str(store_path), "seed": False})
            await late.reconfigure({"model": model})
            assert late.engine.bundle_path == serves and late._promotion_id == broken.id
            assert (error in late.swap_error and "no model bundle" in late.swap_error) if error else not late.swap_error
            late._promotions.cancel()
            late.store.close()

    asyncio.run(scenario())
    store.close()


# ---------------------------------------------------------------------------------------------- the service

def store_of(service: ServeApp) -> str:
    return service.config["applications"][0]["args"]["store"]


def wait_version(stub, version: str, timeout: float = 90.0) -> pb.ModelInfo:
    deadline = time.monotonic() + timeout
    while (info := stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)).version != version:
        assert time.monotonic() < deadline, f"the service never served version {version} (serves {info.version})"
        time.sleep(0.25)
    return info


@pytest.fixture(scope="module")
def stub(serve_app: ServeApp):
    from serving.api.energyopt.v1 import forecast_pb2_grpc as pb_grpc

    with grpc.insecure_channel(serve_app.target) as channel:
        yield pb_grpc.ForecastServiceStub(channel)


def test_a_wrong_year_champion_loses_and_the_service_swaps_without_a_failed_request(
        serve_app: ServeApp, stub, wrong_champion: Path, tmp_path: Path):
    from models.bundle import load_bundle
    from serving import server
    from serving.client import ForecastClient, ForecastError
    from training.retrain import retrain

    original = load_bundle(serve_app.bundle_dir).version
    wrong = load_bundle(wrong_champion).version
    server.deploy(server.with_model(serve_app.config, wrong_champion))  # the wrong-year model in service
    try:
        wait_version(stub, wrong)
        seen, failed, stop = ([], []), [], threading.Event()  # the versions each thread was answered by, in order

        def hammer(mine: list) -> None:
            with ForecastClient(serve_app.target, timeout=20, retries=0) as client:
                while not stop.is_set():
                    try:
                        mine.append(client.forecast_region("SYN", 24).model.version)
                        mine.append(client.model_info().version)
                    except ForecastError as err:
                        failed.append(f"{err.code.name}: {err.message}")

        threads = [threading.Thread(target=hammer, args=(mine,)) for mine in seen]
        for t in threads:
            t.start()
        try:
            d = retrain(store_of(serve_app), wrong_champion, tmp_path / "challenger", backtest_days=28,
                        log=lambda _: None)
            assert d.promoted and d.challenger_score < d.champion_score * 0.9, d.summary()
            info = wait_version(stub, d.challenger_version)
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not failed, failed[:5]
        assert info.bundle_path == "challenger" and not info.swap_error
        for mine in seen:  # each thread: the wrong-year model, then the challenger, never back
            switch = mine.index(d.challenger_version)
            assert switch > 0 and set(mine[:switch]) == {wrong} and set(mine[switch:]) == {d.challenger_version}

        # the decision over gRPC, HTTP and the client, with both figures
        listed = stub.ListModelDecisions(pb.ListModelDecisionsRequest(limit=1), timeout=30).decisions
        assert len(listed) == 1 and listed[0].promoted
        assert (listed[0].champion.version, listed[0].challenger.version) == (wrong, d.challenger_version)
        assert listed[0].champion_score == pytest.approx(d.champion_score) and listed[0].metric == "mae"
        assert listed[0].challenger_path == Path(d.challenger_path).name  # a name: no server paths in answers
        assert listed[0].backtest_start.startswith("2021-")
        with urllib.request.urlopen(f"{serve_app.url}/v1/model/decisions?limit=1", timeout=30) as response:
            body = json.loads(response.read())
        assert body["decisions"][0]["challenger_score"] == pytest.approx(d.challenger_score)
        assert body["decisions"][0]["challenger"]["version"] == d.challenger_version
        with ForecastClient(serve_app.target) as client:
            assert client.list_model_decisions(limit=1).decisions[0].challenger.version == d.challenger_version
    finally:
        server.deploy(serve_app.config)  # the operator's change back to the original bundle wins
        assert not wait_version(stub, original).swap_error


def test_a_worse_challenger_is_not_promoted_and_the_service_keeps_its_model(serve_app: ServeApp, stub,
                                                                            tmp_path: Path):
    from models.bundle import load_bundle

    original = load_bundle(serve_app.bundle_dir).version
    result = cli("retrain", "--store", store_of(serve_app), "--champion", serve_app.bundle_dir,
                 "--out", tmp_path / "undertrained", "--json", "--set", "training.max_epochs=1",
                 "--set", "training.samples_per_epoch=16", "--set", "training.batch_size=16")
    assert result.exit_code == 0, result.output
    d = json.loads(result.output[result.output.index("{"):])
    assert not d["promoted"] and d["challenger_score"] > d["champion_score"], d
    assert d["champion_version"] == original and d["detail"]["overrides"]["training.max_epochs"] == 1
    assert set(d["detail"]["summary"]) == {"champion", "challenger"}

    listing = cli("retrain", "--store", store_of(serve_app), "--list", "--json")
    assert listing.exit_code == 0 and json.loads(listing.output)[0]["id"] == d["id"]
    assert cli("retrain", "--store", store_of(serve_app), "--list").exit_code == 0
    time.sleep(2 * 3.0 + 0.5)  # two polls of every replica (PROMOTION_POLL_S): nothing to follow
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    assert info.version == original and not info.swap_error


def test_cli_retrain_prints_the_decision_and_refuses_bad_input(tmp_path: Path, synthetic_csv: Path,
                                                              wrong_champion: Path):
    store = Store.open(tmp_path / "store.db")
    store.seed(synthetic_csv, region="SYN")
    store.close()
    from mlflow import MlflowClient

    result = cli("retrain", "--store", tmp_path / "store.db", "--champion", wrong_champion,
                 "--out", tmp_path / "challenger", "--metric", "pinball", "--margin", "0.05", "--quiet",
                 "--tracking-uri", tmp_path / "mlflow")
    assert result.exit_code == 0, result.output
    assert "pinball: champion" in result.output and "PROMOTED" in result.output and "challenger" in result.output

    # MLflow: the challenger's training and the decision, in the experiment of the config's name
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny-lstm").experiment_id])
    decided = next(r for r in runs if r.data.tags.get("energyopt.command") == "retrain")
    assert any(r.data.tags.get("energyopt.command") == "train" for r in runs) and len(runs) == 2
    m = decided.data.metrics
    assert m["promoted"] == 1.0 and m["challenger_pinball"] < m["champion_pinball"] * 0.95 and "champion_mae" in m
    assert decided.data.tags["promoted"] == "true" and decided.data.params["metric"] == "pinball"
    assert decided.info.status == "FINISHED"

    for args, message in [
        (("--champion", wrong_champion, "--out", tmp_path / "x", "--metric", "r2"), "metric 'r2'"),
        (("--champion", wrong_champion), "--out DIR is required"),
        (("--champion", wrong_champion, "--out", wrong_champion), "is the champion"),
        (("--out", tmp_path / "y", "--set", "training.max_epochs"), "expected KEY=VALUE"),
        (("--promote", tmp_path / "missing"), "no model bundle"),
        (("--out", tmp_path / "z", "--set", "training.max_epochs=0"), "training.max_epochs"),
    ]:
        bad = cli("retrain", "--store", tmp_path / "store.db", *args)
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output, (args, bad.output)

    # with no --champion, the champion is the newest promotion's bundle (the challenger just promoted)
    again = cli("retrain", "--store", tmp_path / "store.db", "--out", tmp_path / "second", "--json",
                "--set", "training.max_epochs=1", "--set", "training.samples_per_epoch=16")
    assert again.exit_code == 0, again.output
    second = json.loads(again.output[again.output.index("{"):])
    assert second["champion_path"] == str((tmp_path / "challenger").resolve())


def test_the_schedule_runs_retraining_and_stores_its_decision(serve_app: ServeApp, stub, tmp_path: Path):
    """`retrain_every_s` in the Scheduler's user_config: `energyopt retrain` against the served model runs as a
    Ray task, and its decision lands in the store (a margin no challenger can meet: the model stays)."""
    from models.bundle import load_bundle
    from models.decisions import list_decisions
    from models.store import Store
    from serving import server

    original = load_bundle(serve_app.bundle_dir).version
    store = Store.open(store_of(serve_app))
    before = {d.id for d in list_decisions(store, 1000)}
    server.deploy(server.with_schedule(serve_app.config, retrain_every_s=1, retrain_dir=str(tmp_path), retrain_args=[
        "--margin", "0.99", "--backtest-days", "14", "--set", "training.max_epochs=1",
        "--set", "training.samples_per_epoch=16", "--set", "training.batch_size=16", "--no-tracking"]))
    try:
        deadline = time.monotonic() + 240
        while not (new := [d for d in list_decisions(store, 1000) if d.id not in before]):
            assert time.monotonic() < deadline, "the scheduled retraining stored no decision"
            time.sleep(1)
    finally:
        server.deploy(serve_app.config)  # retraining off again
    decision = new[0]
    assert not decision.promoted and decision.champion_version == original
    assert Path(decision.challenger_path).parent == tmp_path.resolve()
    assert Path(decision.challenger_path).name.startswith("challenger-")
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    assert info.version == original and not info.swap_error
    store.close()
