"""A private PostgreSQL server for one test, which the test may stop and start at will.

The machine's shared server is never touched (other test runs use it at the same time).
This one is initialised in a temporary directory with the Debian binaries
(`/usr/lib/postgresql/<version>/bin`, or `$STAGEWISE_PG_BIN`), runs as the `postgres` OS
user when the tests run as root (initdb refuses root), listens on 127.0.0.1 on a free port
with trust authentication, and skips durability (fsync off): a restart is a clean
`pg_ctl stop -m fast`, which drops every connection, then `pg_ctl start`.

Without the binaries the test is skipped, except under `CI=true`, where it fails.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest


def _bin_dir() -> Path | None:
    configured = os.environ.get("STAGEWISE_PG_BIN")
    candidates = [configured] if configured else sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    for folder in reversed(candidates):
        if folder and (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PrivatePostgres:
    bin: Path
    root: Path
    port: int
    as_postgres: bool

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )

    def init(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync",
            "-E", "UTF8",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def private_postgres() -> PrivatePostgres:
    """Start a private server (skips, or fails under CI, when it cannot)."""
    folder = _bin_dir()
    if folder is None:
        message = (
            "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin "
            "or $STAGEWISE_PG_BIN"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI needs them for the database restart test", pytrace=False)
        pytest.skip(f"{message}: install postgresql to run the database restart test")
    as_postgres = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="stagewise-pg-"))
    if as_postgres:
        shutil.chown(root, user="postgres", group="postgres")
    server = PrivatePostgres(bin=folder, root=root, port=_free_port(), as_postgres=as_postgres)
    try:
        server.init()
        server.start()
    except BaseException:
        server.destroy()
        raise
    return server
