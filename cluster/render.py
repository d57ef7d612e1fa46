"""Write cluster/rayservice.yaml from configs/serve.yaml: the RayService embeds the Serve config
verbatim except for the CLUSTER_OVERRIDES below (what differs inside Kubernetes pods).

    python cluster/render.py          # after any change to configs/serve.yaml

tests/test_cluster.py fails when the embedded config and configs/serve.yaml drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVE_CONFIG = ROOT / "configs" / "serve.yaml"
TEMPLATE, OUTPUT = Path(__file__).with_name("rayservice.template.yaml"), Path(__file__).with_name("rayservice.yaml")

# (path, value): the only differences from configs/serve.yaml
CLUSTER_OVERRIDES: list[tuple[tuple[Any, ...], Any]] = [
    (("proxy_location",), "EveryNode"),  # a proxy on every node: the Kubernetes Service spreads traffic
    (("http_options", "host"), "0.0.0.0"),  # reachable from the pod network, not only loopback
    (("applications", 0, "deployments", 0, "user_config", "model"), "/models/serve"),  # the models volume
    (("applications", 0, "deployments", 0, "autoscaling_config", "max_replicas"), 8),  # room on a cluster
    # one store that every replica on every node reaches (a SQLite file would be per pod): the cluster's
    # PostgreSQL service; put the password in the URL from a Secret, or use trust auth inside the cluster
    (("applications", 0, "args", "store"), "postgresql://energyopt@energyopt-postgres:5432/energyopt"),
]


def cluster_serve_config(serve_config: dict) -> dict:
    """configs/serve.yaml as it runs on the cluster (a deep copy with CLUSTER_OVERRIDES applied)."""
    config = yaml.safe_load(yaml.safe_dump(serve_config))
    for path, value in CLUSTER_OVERRIDES:
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return config


def render() -> str:
    serve = cluster_serve_config(yaml.safe_load(SERVE_CONFIG.read_text()))
    block = yaml.safe_dump(serve, sort_keys=False, width=110)
    indented = "\n".join(("    " + line) if line else line for line in block.splitlines())
    return TEMPLATE.read_text().replace("    {{SERVE_CONFIG}}", indented)


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
