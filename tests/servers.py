"""A service of its own for a test module: `python -m serving.server` in a subprocess with its own local Ray,
started and killed -9 whole (tests/test_live.py, tests/test_archive.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

REPO = Path(__file__).resolve().parent.parent


def _processes(leader: int, marker: str) -> list[tuple[int, str]]:
    """Live processes (not zombies) in the session or process group that `leader` led, or whose command line
    mentions `marker`. The session, not only the group: Ray puts each worker in a group of its own, and
    HAProxy, a worker's child, outlives it (orphaned, still holding the service's ports)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X") or not cmdline.strip():  # a zombie, or a process exiting (no command line)
            continue
        if leader in (int(fields[2]), int(fields[3])) or marker in cmdline:
            found.append((int(entry), cmdline.strip()[:160]))
    return found


@dataclass
class ServerProcess:
    """`python -m serving.server` as the leader of a session of its own (its Ray's processes are in it too)."""

    command: list[str]
    env: dict[str, str]
    ray_tmp: Path
    store_path: Path
    log: Path
    grpc_port: int
    http_port: int
    metrics_port: int | None = field(default=None, kw_only=True)  # its Ray's metrics export (Prometheus)
    proc: subprocess.Popen | None = field(default=None, kw_only=True)
    channel: grpc.Channel | None = field(default=None, kw_only=True)

    def start(self, timeout_s: float = 240.0) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(self.command, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=out,
                                     start_new_session=True, text=True)
        out.close()
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stdout:
                if line.startswith("READY "):
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not ready.wait(0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                code, tail = self.proc.returncode, self.log.read_text(errors="replace")[-3000:]
                self.kill()
                pytest.fail(f"the server did not get READY (exit {code}); its log ends:\n{tail}", pytrace=False)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")

    def kill(self) -> None:
        """kill -9 of the server's whole process group, then of every process of its session or its Ray's
        temporary directory that outlived it (Ray's workers and their HAProxy: see `_processes`)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the server leads its own group
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        deadline, outlived = time.monotonic() + 20, {}
        while left := _processes(pgid, str(self.ray_tmp)):  # nothing may hold its ports or store at a restart
            for pid, cmdline in left:
                outlived[pid] = cmdline
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(f"processes of the killed server survive: {left}")
            time.sleep(0.2)
        with self.log.open("a") as log:  # for whoever reads the log of a failure
            log.writelines(f"[test] killed after the group's kill -9: {pid} {cmd}\n" for pid, cmd in outlived.items())
        self.proc = None


def schedule_config(root: Path, *, scheduler_replicas: int | None = None, **schedule: Any) -> Path:
    """configs/serve.yaml with the Scheduler's user_config changed by `schedule` (ScheduleConfig fields) and,
    given, its replica count: written to root/serve.yaml, whose path is returned (server_process's `config`)."""
    import yaml

    config = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Scheduler":
            deployment["user_config"] |= schedule
            if scheduler_replicas is not None:
                deployment["num_replicas"] = scheduler_replicas
    path = root / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def server_process(root: Path, *, model: Path, args: dict[str, Any], replicas: int = 2, config: Path | None = None,
                   cls: type = ServerProcess, **fields: Any) -> Any:
    """A `cls` (ServerProcess or a subclass, given its own `fields`) serving `model` with app `args` on ports
    of its own, from the Serve `config` (default configs/serve.yaml); not started yet. Its store is
    args["store"]."""
    from serving.server import free_ports

    # short: Ray's socket paths under it must stay within the Unix limit (107 bytes)
    ray_tmp = Path(tempfile.mkdtemp(prefix="eo-ray-", dir="/tmp"))
    grpc_port, http_port, metrics_port = free_ports(3)
    command = [sys.executable, "-m", "serving.server", "--config", str(config or REPO / "configs" / "serve.yaml"),
               "--model", str(model), "--grpc-port", str(grpc_port), "--http-port", str(http_port),
               "--metrics-port", str(metrics_port), "--replicas", str(replicas), "--num-cpus", "2",
               "--args", json.dumps(args)]
    # Nothing of this session's Ray (no RAY_ADDRESS, none of its Serve ports): the server's own
    # `configure_local_ray` picks ports of its own, so the two services never share one (SO_REUSEPORT).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1"}
    return cls(command, env, ray_tmp, Path(args["store"]), root / "server.log", grpc_port, http_port,
               metrics_port=metrics_port, **fields)


@contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    """`server` started, then killed and its Ray's temporary directory removed (a module fixture's body)."""
    import shutil

    try:
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(server.ray_tmp, ignore_errors=True)
