"""The gRPC API definition: committed stubs are current, every field is documented, messages pickle."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

from serving import gen_proto
from serving.api.energyopt.v1 import forecast_pb2 as pb
from serving.api.energyopt.v1 import readings_pb2 as rpb

PROTOS = sorted(Path(gen_proto.PROTO_ROOT).rglob("*.proto"))


def test_committed_stubs_are_what_the_proto_generates():
    stale = gen_proto.check()
    assert not stale, f"stale stubs {stale}: run `python -m serving.gen_proto` and commit serving/api"


def test_every_field_message_service_and_rpc_is_commented():
    field = re.compile(r"^\s*(repeated\s+|optional\s+)?(map<[^>]+>|[\w.]+)\s+\w+\s*=\s*\d+\s*;")
    undocumented = []
    assert len(PROTOS) >= 4, PROTOS
    for proto in PROTOS:
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            if field.match(line) or re.match(r"^\s*(service|rpc)\s", line):
                if not lines[i - 1].strip().startswith("//"):
                    undocumented.append(f"{proto.name}:{i + 1}: {line.strip()}")
    assert not undocumented, "fields without a comment line above them:\n" + "\n".join(undocumented)


def test_package_is_versioned_and_service_complete():
    assert pb.DESCRIPTOR.package == "energyopt.v1"
    service = pb.DESCRIPTOR.services_by_name["ForecastService"]
    assert {m.name for m in service.methods} == {"ForecastRegion", "ForecastSeries", "GetModelInfo", "ListForecasts",
                                                 "GetForecastAccuracy", "ListModelDecisions"}
    readings = rpb.DESCRIPTOR.services_by_name["ReadingsService"]
    assert {m.name for m in readings.methods} == {"IngestReadings", "StreamReadings", "ListZones", "ListReadings"}


def test_messages_pickle_by_an_importable_module():
    """Serve's proxy pickles requests to the replicas: the classes must live in an importable module (the
    generator's default, `energyopt.v1.forecast_pb2`, is not one)."""
    assert pb.ForecastRegionRequest.__module__ == "serving.api.energyopt.v1.forecast_pb2"
    request = pb.ForecastRegionRequest(region="PJM", horizon=48, quantiles=[0.1, 0.9])
    assert pickle.loads(pickle.dumps(request)) == request
