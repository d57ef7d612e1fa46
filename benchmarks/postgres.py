"""A throwaway PostgreSQL cluster: initdb in a temporary directory outside the repository, on a free
loopback port, trust auth, fsync on (the store's durability is measured on it); stopped and deleted after.

    with throwaway_postgres() as url:          # postgresql+psycopg://postgres@127.0.0.1:PORT/energyopt_bench
        store = Store.open(url)

The tests' PostgreSQL fixtures (tests/conftest.py) and the benchmarks share this code. Nothing is set in
os.environ. The server comes from /usr/lib/postgresql/<version>/bin (Debian's postgresql package, which
`.ci/run` installs) or PATH. As root, the cluster belongs to the `postgres` system user (created if missing),
since initdb refuses to run as root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class PostgresError(RuntimeError):
    """The server is not installed, or initdb / pg_ctl failed (the message has their output and the log)."""


def postgres_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and pg_ctl (Debian), else PATH's."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in path.name.split(".") if part.isdigit())

    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: version(p.parent), reverse=True)
    for bin_dir in versions:
        if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
            return bin_dir
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).resolve().parent / "pg_ctl").is_file():
        return Path(initdb).resolve().parent
    return None


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresCluster:
    port: int
    user: str = "postgres"
    host: str = "127.0.0.1"

    def url(self, database: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of one database of the cluster."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def admin(self) -> Any:
        """An autocommit psycopg connection to the cluster's `postgres` database (CREATE/DROP DATABASE)."""
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres",
                               autocommit=True, connect_timeout=10)


NOT_INSTALLED = ("PostgreSQL server not found (no initdb/pg_ctl in /usr/lib/postgresql/*/bin or on PATH); "
                 "`bash .ci/run` installs it (apt-get install postgresql), or install it by hand")


@contextmanager
def postgres_cluster(database: str | None = None, *, options: str = "-c shared_buffers=16MB -c max_connections=50"
                     ) -> Iterator[PostgresCluster]:
    """A running throwaway cluster (with `database` created in it, if given), stopped and deleted on exit.
    `options`: server settings beyond the fixed ones (loopback only, no Unix socket, fsync=on).
    Raises PostgresError when the server is missing or does not start."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise PostgresError(NOT_INSTALLED)
    as_root = os.geteuid() == 0
    prefix: list[str] = []
    if as_root:  # initdb refuses to run as root: the cluster is the postgres system user's
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
                           check=True, capture_output=True)
            owner = pwd.getpwnam("postgres")
        prefix = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else []
    root = Path(tempfile.mkdtemp(prefix="energyopt-pg-"))
    data, log = root / "data", root / "server.log"
    # the server's tools get a clean environment: no PG* variable of the caller's points them elsewhere
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}

    def run(*args: str | Path) -> subprocess.CompletedProcess:
        cmd = [str(a) for a in args]
        if as_root and not prefix:  # no runuser: su, through a shell
            import shlex

            cmd = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]
        return subprocess.run(prefix + cmd, cwd=root, env=env, capture_output=True, text=True, timeout=180)

    def failed(what: str, proc: subprocess.CompletedProcess) -> PostgresError:
        server_log = log.read_text(errors="replace")[-4000:] if log.exists() else ""
        return PostgresError(f"PostgreSQL {what} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}{server_log}")

    try:
        if as_root:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        proc = run(bin_dir / "initdb", "-D", data, "--username=postgres", "--auth=trust", "--encoding=UTF8",
                   "--locale=C")
        if proc.returncode != 0:
            raise failed("initdb", proc)
        for _ in range(3):  # the free port may be taken between the probe and the bind: another one then
            port = free_loopback_port()
            server_options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=on "
                              f"{options}")
            proc = run(bin_dir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", server_options, "start")
            if proc.returncode == 0:
                break
            if "already in use" not in (log.read_text(errors="replace") if log.exists() else ""):
                raise failed("pg_ctl start", proc)
        else:
            raise failed("pg_ctl start", proc)
        cluster = PostgresCluster(port=port)
        if database:
            from psycopg import sql

            with cluster.admin() as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        yield cluster
    finally:
        if (data / "postmaster.pid").exists():  # running (or left by a start that timed out): stop it
            if run(bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop").returncode:
                run(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def throwaway_postgres(database: str = "energyopt_bench", **kwargs: Any) -> Iterator[str]:
    """The SQLAlchemy URL (postgresql+psycopg://) of an empty database in a throwaway cluster (see
    `postgres_cluster`), which is stopped and deleted on exit."""
    with postgres_cluster(database, **kwargs) as cluster:
        yield cluster.url(database)
