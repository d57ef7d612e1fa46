"""The service on loopback: every listening socket of `python -m serving.server` (its own local Ray, HAProxy
ingress) and of all its Ray processes is bound to 127.0.0.1 or ::1 (docs/resilience.md); its answers name no
path of the server's filesystem."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import sys
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import _processes, running, server_process  # noqa: E402

from serving.api.energyopt.v1 import forecast_pb2 as pb  # noqa: E402
from serving.api.energyopt.v1 import forecast_pb2_grpc as pb_grpc  # noqa: E402
from serving.server import listeners  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def loopback_server(tmp_path_factory, tiny_bundle_dir: Path, synthetic_csv: Path):
    root = tmp_path_factory.mktemp("ports")
    args = {"store": str(root / "store.db"), "data": str(synthetic_csv), "region": "SYN"}
    server = server_process(root, model=tiny_bundle_dir, args=args, replicas=1)
    with running(server):
        yield server


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback  # ::ffff:127.0.0.1 too


def test_every_socket_of_the_service_and_its_ray_listens_on_loopback_only(loopback_server):
    import time

    deadline = time.monotonic() + 30
    while True:  # the listing works: it finds the service's own ports (HAProxy may be between reloads)
        procs = dict(_processes(loopback_server.proc.pid, str(loopback_server.ray_tmp)))
        found = listeners(set(procs))
        if {loopback_server.grpc_port, loopback_server.http_port} <= {port for _, _, port in found}:
            break
        assert time.monotonic() < deadline, found
        time.sleep(1)
    offenders = sorted({(f"pid {pid} " + " ".join(procs[pid].split()[:2])[-90:], f"{address}:{port}")
                        for pid, address, port in found if not loopback(address)})
    assert not offenders, "listening beyond loopback:\n" + "\n".join(f"  {p}  {a}" for p, a in offenders)


def test_haproxys_admin_socket_is_its_owners_only(loopback_server):
    procs = _processes(loopback_server.proc.pid, str(loopback_server.ray_tmp))
    haproxy = [pid for pid, cmd in procs if "haproxy" in cmd.split()[0]]
    assert haproxy, procs
    configs = [Path(a) for pid in haproxy for a in Path(f"/proc/{pid}/cmdline").read_text().split("\0")
               if a.endswith(".cfg")]
    config = configs[0].read_text()
    admin = next(line.split()[2] for line in config.splitlines() if line.strip().startswith("stats socket"))
    assert stat.S_IMODE(os.stat(admin).st_mode) & 0o077 == 0, oct(os.stat(admin).st_mode)


def test_every_ray_process_of_the_service_runs_with_its_memory_settings(loopback_server):
    """What configure_local_ray sets reaches every process of the service's Ray (read when each starts, so set
    too late it would reach none): the memory monitor off (docs/resilience.md, "Memory pressure") and glibc's
    allocator settings that keep a replica's memory from ratcheting up ("Memory of a replica")."""
    procs = _processes(loopback_server.proc.pid, str(loopback_server.ray_tmp))
    # the raylet (its memory monitor), the GCS and Serve's actors (Ray's agents get an environment of their own)
    ray_procs = [(pid, cmd) for pid, cmd in procs
                 if "/raylet " in cmd or "/gcs_server " in cmd or cmd.startswith("ray::Serve")]
    assert any("/raylet " in cmd for _, cmd in ray_procs), procs
    assert any(cmd.startswith("ray::ServeReplica") for _, cmd in ray_procs), procs
    wanted = {"RAY_memory_monitor_refresh_ms": "0", "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    for pid, cmd in ray_procs:
        environ = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
        assert {k: environ.get(k) for k in wanted} == wanted, cmd[:90]


def test_a_machine_short_of_memory_does_not_take_the_service_down(tmp_path, tiny_bundle_dir: Path,
                                                                    synthetic_csv: Path):
    """Ray's memory monitor kills workers once the machine's memory use passes its threshold, whoever uses the
    memory (another process's growth took every Serve actor down: 86 s without a service). At a threshold of
    1 % the machine always counts as short of memory: the replica answers and is the same process seconds later
    (the monitor checks every 250 ms when it runs; docs/resilience.md, "Memory pressure")."""
    import time

    args = {"store": str(tmp_path / "store.db"), "data": str(synthetic_csv), "region": "SYN"}
    server = server_process(tmp_path, model=tiny_bundle_dir, args=args, replicas=1)
    server.env["RAY_memory_usage_threshold"] = "0.01"
    with running(server):
        def replicas() -> list[int]:
            return [pid for pid, cmd in _processes(server.proc.pid, str(server.ray_tmp))
                    if cmd.startswith("ray::ServeReplica:energyopt:Forecaster")]

        first = replicas()
        time.sleep(5)
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            info = pb_grpc.ForecastServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
        assert info.name == "tiny-lstm" and first and replicas() == first


def test_get_model_info_names_no_path_of_the_server(loopback_server, tiny_bundle_dir: Path):
    with grpc.insecure_channel(f"127.0.0.1:{loopback_server.grpc_port}") as channel:
        info = pb_grpc.ForecastServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
    assert info.bundle_path == tiny_bundle_dir.name
    text = str(info)
    assert str(tiny_bundle_dir.parent) not in text and str(Path.cwd()) not in text, text


def test_a_restart_after_a_kill_9_stops_the_stale_haproxy_holding_the_ports(loopback_server, tiny_bundle_dir: Path):
    """kill -9 of the server's process group and of its Ray's processes (as `ray stop --force` would) leaves
    Serve's HAProxy, a child of a worker in another session, listening on the service's ports: the next start on
    those ports stops it (and says so) instead of sharing the ports with it. The module's last test: it kills
    the module's server (one start fewer than a server of its own)."""
    import signal
    import time

    first = loopback_server
    stale: list[int] = []
    try:
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.proc.wait(30)
        left = _processes(first.proc.pid, str(first.ray_tmp))
        stale += [pid for pid, cmd in left if "haproxy" in cmd.split()[0]]
        assert stale, left
        for pid, _ in left:
            if pid not in stale:
                os.kill(pid, signal.SIGKILL)
        time.sleep(1)
        assert {port for pid, _, port in listeners(set(stale))} & {first.grpc_port, first.http_port}
        second = server_process(first.log.parent, model=tiny_bundle_dir, args=json.loads(first.command[-1]),
                                replicas=1)
        second.command, second.grpc_port, second.http_port = first.command, first.grpc_port, first.http_port
        with running(second):
            assert not any(Path(f"/proc/{pid}").exists() for pid in stale)
            with grpc.insecure_channel(f"127.0.0.1:{second.grpc_port}") as channel:
                info = pb_grpc.ForecastServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
            assert info.name == "tiny-lstm"
        assert "stopping a stale HAProxy" in second.log.read_text(errors="replace")
    finally:
        for pid, _ in _processes(first.proc.pid, str(first.ray_tmp)):
            os.kill(pid, signal.SIGKILL)
        for pid in stale:
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
