"""A throwaway PostgreSQL cluster for tests: initdb in a temp dir, a free loopback port,
stopped by its own handle. As root, the server runs as the ``postgres`` system user
(PostgreSQL refuses to run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.mosquitto import free_port, wait_port


def find_pg_bin() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    def __init__(self) -> None:
        bindir = find_pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (make test installs it with apt-get)")
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="jetfleet-pg-"))
        self.data = self.root / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.started = False

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresCluster:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--no-sync")
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "pg.log"),
                  "-w", "start")
        wait_port("127.0.0.1", self.port)
        self.started = True
        return self

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.started:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            finally:
                self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


_SHARED: dict[str, object] = {}


def database_for(key: str) -> str | None:
    """With ``JETFLEET_TEST_DATABASE=postgres``: a database URL for ``key`` (the same one
    each time, so a restarted server finds its data) on one cluster per test process,
    stopped when the process exits. Otherwise None (SQLite)."""
    import atexit

    if os.environ.get("JETFLEET_TEST_DATABASE", "sqlite") != "postgres":
        return None
    if "cluster" not in _SHARED:
        cluster = PostgresCluster().start()
        _SHARED["cluster"] = cluster
        atexit.register(cluster.stop)
    if key not in _SHARED:
        cluster = _SHARED["cluster"]
        assert isinstance(cluster, PostgresCluster)
        _SHARED[key] = cluster.create_database(f"e{len(_SHARED)}")
    url = _SHARED[key]
    assert isinstance(url, str)
    return url
