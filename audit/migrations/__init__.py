"""The audit database's versioned migrations, as package data (setup.cfg ``[options.package_data]``).

One file per version and dialect: ``NNNN_name.sqlite.sql`` and
``NNNN_name.postgresql.sql``. Every version exists in both dialects (a unit
test checks it). A store applies the versions it has not applied yet, in
order, each in its own transaction together with its row in
``schema_migrations(version, applied_at)``; a file, once released, is never
edited: a change is a new version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

__all__ = ["DIALECTS", "Migration", "migrations"]

DIALECTS = ("sqlite", "postgresql")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sqlite|postgresql)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: str) -> list[Migration]:
    """Every migration of ``dialect``, in version order."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}")
    found = []
    for entry in resources.files(__name__).iterdir():
        match = _NAME.match(entry.name)
        if match and match.group(3) == dialect:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two {dialect} migrations share a version: {versions}")
    return found
