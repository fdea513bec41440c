"""Autobahn|Testsuite sections 1-7 and 10 against the test-only echo route.

Runs the Python 3 runner ``kosoku`` (Autobahn's own case files, same report
format). Autobahn accepts an empty close frame where a code is due, so the
test also checks that every close frame the server sent carried a code
(except when echoing a client's own empty close, case 7.3.1).
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT, GatewayProcess

SECTIONS = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]


def test_autobahn_sections_1_to_7_and_10(tmp_path):
    kosoku = shutil.which("kosoku") or str(Path(sys.executable).with_name("kosoku"))
    outdir = ROOT / "artifacts" / "autobahn"
    shutil.rmtree(outdir, ignore_errors=True)
    with GatewayProcess({"GATEWAY_TEST_ECHO": "1", "LOG_LEVEL": "INFO"}) as gw:
        args = [kosoku, f"ws://127.0.0.1:{gw.port}/ws-echo", "-o", str(outdir)]
        for section in SECTIONS:
            args += ["-i", section]
        run = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    index = json.loads((outdir / "index.json").read_text())
    results = next(iter(index.values()))
    behaviors = collections.Counter(case["behavior"] for case in results.values())
    print("autobahn:", dict(behaviors))
    assert len(results) == 247
    assert set(behaviors) <= {"OK", "NON-STRICT", "INFORMATIONAL"}
    assert behaviors["OK"] >= 240
    no_code = [case for case, r in results.items() if r.get("remoteCloseCode") is None]
    assert no_code == ["7.3.1"]
    assert all(r["behaviorClose"] in ("OK", "INFORMATIONAL") for r in results.values())
