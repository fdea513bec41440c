"""A real PostgreSQL server for tests, on a free port on 127.0.0.1, in a temporary directory.

The binaries come from PATH or from ``/usr/lib/postgresql/<version>/bin``
(Debian's ``postgresql`` package puts them there, not on PATH); missing, the
tests skip, or fail under CI (``GATEWAY_REQUIRE_TOOLS=1``, tests/tools.py).
PostgreSQL refuses to run as root, so when the tests run as root (CI's
container) the cluster belongs to the ``postgres`` user Debian's package
creates (``nobody`` otherwise) and every server command runs through
``runuser``. The superuser has a password, checked on TCP (scram-sha-256):
the URL carries one, as production's does, so log lines can be checked for
its redaction.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time

from tests.redis_server import free_port
from tests.tools import require_tool

INSTALL = "apt-get install postgresql; .ci/run does it"


def postgres_bindir() -> str:
    """The directory of ``initdb``, ``pg_ctl`` and ``postgres`` (skip or fail when absent)."""
    found = shutil.which("initdb")
    if found is not None:
        return os.path.dirname(os.path.realpath(found))
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if candidates:
        return os.path.dirname(candidates[-1])
    return os.path.dirname(require_tool("initdb", install=INSTALL))  # skips or fails


def _server_user() -> str | None:
    """The account to run the server as: None for ourselves, unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a postgres nor a nobody account exists")


class PostgresServer:
    """``start()``, ``stop()`` (fast shutdown, the data kept), ``start()`` again on the same port, ``cleanup()``."""

    user_name = "gateway"
    password = "s3cret-pw"
    database = "postgres"

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="postgres-test-")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self.owner = _server_user()
        if self.owner is not None:
            entry = pwd.getpwnam(self.owner)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.initialised = False

    @property
    def url(self) -> str:
        return f"postgresql://{self.user_name}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [os.path.join(self.bindir, args[0]), *args[1:]]
        if self.owner is not None:
            command = ["runuser", "-u", self.owner, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
                               f"{self._log_tail()}")
        return result

    def _log_tail(self) -> str:
        try:
            with open(self.log) as f:
                return "\nserver log:\n" + "".join(f.readlines()[-20:])
        except OSError:
            return ""

    def _initdb(self) -> None:
        pwfile = os.path.join(self.dir, "pwfile")
        with open(pwfile, "w") as f:
            f.write(self.password + "\n")
        if self.owner is not None:
            entry = pwd.getpwnam(self.owner)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", self.data, "-U", self.user_name, f"--pwfile={pwfile}", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync")
        os.unlink(pwfile)
        self.initialised = True

    def start(self) -> PostgresServer:
        if not self.initialised:
            self._initdb()
        # -k: the Unix socket in our own directory (not /var/run/postgresql); fsync off: a test cluster.
        options = f"-p {self.port} -h 127.0.0.1 -k {self.dir} -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "30", "start")
        deadline = time.monotonic() + 10
        while True:
            ready = subprocess.run([os.path.join(self.bindir, "pg_isready"), "-h", "127.0.0.1", "-p",
                                    str(self.port)], capture_output=True)
            if ready.returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError("postgres did not become ready" + self._log_tail())
            time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown: connections are cut, the data stays for the next ``start()``."""
        if self.initialised and os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "30", "stop")

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
