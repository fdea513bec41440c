"""Fresh virtualenvs for the install tests, built in the background while the rest of the suite runs.

``pip install`` of the gateway's wheel with every dependency, and of the
client library alone, take 15–30 s each, most of it pip unpacking and
compiling; nothing about them needs the machine to themselves. So when a
run selects those tests, ``tests/conftest.py`` starts each build as its own
process right after collection (``python -m tests.installs gateway|client
DIR``) and the tests wait for it. A build that fails fails its tests with
its output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "clients" / "python"
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "artifacts", "build", "dist", "*.egg-info", "__pycache__",
                                    "node_modules", ".pytest_cache", ".hypothesis", ".ruff_cache", ".demo",
                                    "*.so")  # (the wheel builds its own)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this test run's virtualenv or paths."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def build_gateway(base: Path) -> Path:
    """``pip wheel`` of a copy of the tree, installed (not editable) in a fresh venv: its bin/."""
    source, dist, venv = base / "src", base / "dist", base / "venv"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    env = clean_env()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(source)],
                   check=True, env=env, timeout=300)
    wheels = list(dist.glob("trading_ws_gateway-*.whl"))
    assert len(wheels) == 1, wheels
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=120)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheels[0])],
                   check=True, env=env, timeout=600)
    return venv / "bin"


def build_client(base: Path) -> Path:
    """The client library alone, installed from a copy of its directory in a fresh venv: its python."""
    source, venv = base / "client", base / "venv"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build", "dist"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
                   check=True, timeout=600)
    return python


BUILDS = {"gateway": build_gateway, "client": build_client}


class Background:
    """One build, started now in its own process; :meth:`result` waits for it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.base = Path(tempfile.mkdtemp(prefix=f"gw-install-{kind}-"))
        self.log = self.base / "build.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.installs", kind, str(self.base)], cwd=ROOT,
                                         stdout=out, stderr=subprocess.STDOUT)

    def result(self, timeout: float = 900.0) -> Path:
        """The built path (bin/ or python), or AssertionError with the build's output."""
        started = time.monotonic()
        code = self.proc.wait(timeout=timeout)
        output = self.log.read_text()
        assert code == 0, f"building the {self.kind} install failed (exit {code}):\n{output[-4000:]}"
        path = Path(output.strip().splitlines()[-1])
        assert path.exists(), output[-4000:]
        self.waited = time.monotonic() - started
        return path

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)


if __name__ == "__main__":
    print(BUILDS[sys.argv[1]](Path(sys.argv[2])), flush=True)
