"""The project stands alone: nothing in it reads, or sends a reader to, a path outside its tree.

``.ci/run`` proves the reading half by running the suite from a ``git archive``
copy with nothing beside it; this test catches the citing half (a docstring or
a doc naming the notes folder beside the checkout, or one machine's absolute
path), which no import would trip over.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit  # pure: no sockets, no processes (make check)

ROOT = Path(__file__).resolve().parents[1]
TEXT = {".py", ".md", ".cfg", ".toml", ".yml", ".yaml", ".json", ".js", ".html", ".txt", ".sh", ""}
# Generated or installed, never written by us; hidden folders too, but for .ci.
SKIP = {"artifacts", "node_modules", "__pycache__", "build", "dist"}
# The notes folder beside the checkout, or an absolute path into the machine this was written on. Built
# from parts so that this file does not match itself.
OUTSIDE = re.compile(r"\.\./" + "shared" + r"|/" + "work" + r"/(?:main|shared)\b")


def project_files() -> list[Path]:
    files = []
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if any(p in SKIP or p.endswith(".egg-info") or (p.startswith(".") and p != ".ci") for p in parts[:-1]):
            continue
        if path.is_file() and (path.suffix in TEXT or path.parent.name == ".ci"):
            files.append(path)
    return files


def test_no_file_names_a_path_outside_the_project() -> None:
    files = project_files()
    assert len(files) > 50  # the walk found the tree
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for path in files
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
            if OUTSIDE.search(line)]
    assert hits == []


def test_the_fixtures_each_carry_their_provenance() -> None:
    fixtures = ROOT / "tests" / "fixtures" / "bybit-v5"
    frames = sorted(fixtures.glob("*.json"))
    assert len(frames) >= 19
    missing = [f.name for f in frames if not (fixtures / f"{f.stem}.source.txt").is_file()]
    assert missing == []
