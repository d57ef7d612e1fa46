"""KubeRay manifests (cluster/): they parse, name only fields KubeRay's CRDs define (vendored field tree
cluster/kuberay_schema.yaml), and the RayService serves exactly configs/serve.yaml."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
MANIFESTS = sorted(p for p in CLUSTER.glob("*.yaml") if p.name != "kuberay_schema.yaml"
                   and not p.name.endswith(".template.yaml"))
SCHEMA = yaml.safe_load((CLUSTER / "kuberay_schema.yaml").read_text())
SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def unknown_fields(value: Any, kind: Any, path: str) -> list[str]:
    """Every key under `value` that type `kind` of the vendored KubeRay field tree does not define."""
    if kind == "any":
        return []
    if kind == "map":
        return [] if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()) else \
            [f"{path}: expected a string map"]
    if isinstance(kind, str) and kind in SCALARS:
        return [] if isinstance(value, SCALARS[kind]) else [f"{path}: expected {kind}, got {value!r}"]
    if isinstance(kind, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [p for i, item in enumerate(value) for p in unknown_fields(item, kind[0], f"{path}[{i}]")]
    fields = SCHEMA["types"][kind] if isinstance(kind, str) else kind
    if not isinstance(value, dict):
        return [f"{path}: expected an object"]
    problems = [f"{path}.{key}: not a field of {kind if isinstance(kind, str) else 'this object'}"
                for key in value if key not in fields]
    return problems + [p for key, item in value.items() if key in fields
                       for p in unknown_fields(item, fields[key], f"{path}.{key}")]


def test_the_checker_catches_a_misspelt_field() -> None:
    doc = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"},
           "spec": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [
               {"name": "h", "image": "i", "resource": {}}]}}}, "workerGroupSpec": []}}
    problems = unknown_fields(doc, SCHEMA["roots"]["RayCluster"], "RayCluster")
    assert any("workerGroupSpec" in p for p in problems)
    assert any("containers[0].resource" in p for p in problems)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_parses_and_names_only_crd_fields(manifest: Path) -> None:
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc)
        if doc["apiVersion"] != "ray.io/v1":
            continue
        assert doc["kind"] in SCHEMA["roots"]
        assert unknown_fields(doc, SCHEMA["roots"][doc["kind"]], doc["kind"]) == []


def test_kinds_cover_the_deployment() -> None:
    kinds = {}
    for manifest in MANIFESTS:
        for doc in yaml.safe_load_all(manifest.read_text()):
            kinds.setdefault(doc["kind"], []).append(doc)
    assert len(kinds["RayService"]) == 1 and len(kinds["RayCluster"]) == 1 and len(kinds["RayJob"]) == 3
    for spec in [kinds["RayService"][0]["spec"]["rayClusterConfig"], kinds["RayCluster"][0]["spec"]]:
        assert spec["enableInTreeAutoscaling"] is True
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert set(groups) == {"cpu", "gpu"}
        gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert gpu_limits["nvidia.com/gpu"] == "1" and groups["gpu"]["minReplicas"] == 0
    entrypoints = " ".join(job["spec"]["entrypoint"] for job in kinds["RayJob"])
    assert "energyopt sweep --config configs/sweep/lstm.yaml" in entrypoints and "energyopt score" in entrypoints
    assert "energyopt retrain" in entrypoints
    assert (ROOT / "configs" / "sweep" / "lstm.yaml").is_file()


def test_the_retraining_jobs_use_the_services_store_and_the_training_cluster() -> None:
    """cluster/rayjob-retrain.yaml: the RayJob and the weekly CronJob run the same `energyopt retrain` on the
    energyopt-train cluster, against the store the RayService's replicas read (they follow its promotions)."""
    service = yaml.safe_load((CLUSTER / "rayservice.yaml").read_text())
    store = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["store"]
    job, cron = list(yaml.safe_load_all((CLUSTER / "rayjob-retrain.yaml").read_text()))
    assert job["kind"] == "RayJob" and job["spec"]["clusterSelector"] == {"ray.io/cluster": "energyopt-train"}
    assert cron["apiVersion"] == "batch/v1" and cron["kind"] == "CronJob"
    assert len(cron["spec"]["schedule"].split()) == 5 and cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    submitted = " ".join(container["args"])
    assert "ray job submit --address http://energyopt-train-head-svc:8265 --" in submitted
    train = yaml.safe_load((CLUSTER / "raycluster.yaml").read_text())
    assert train["metadata"]["name"] == "energyopt-train"
    for command in (job["spec"]["entrypoint"], submitted.split(" -- ", 1)[1]):
        assert command.startswith("energyopt retrain ") and f"--store {store} " in command
        assert "--out /models/challengers/$(date" in command  # a new folder per run, on the shared volume
    assert job["spec"]["entrypoint"] == submitted.split(" -- ", 1)[1]


def test_rayservice_embeds_configs_serve_yaml() -> None:
    spec = importlib.util.spec_from_file_location("cluster_render", CLUSTER / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    service = yaml.safe_load((CLUSTER / "rayservice.yaml").read_text())
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    expected = render.cluster_serve_config(yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text()))
    assert embedded == expected, "cluster/rayservice.yaml is out of date: run `python cluster/render.py`"
    # the overrides are the only difference, and each one really changes something
    base = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    assert embedded["applications"][0]["import_path"] == base["applications"][0]["import_path"]
    for path, value in render.CLUSTER_OVERRIDES:
        node = base
        for key in path:
            node = node[key]
        assert node != value
