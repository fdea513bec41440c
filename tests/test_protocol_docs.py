"""docs/protocol.md and the code agree: close codes and error codes."""

from __future__ import annotations

import re

from protocol.close_codes import CLOSE_CODES
from protocol.errors import ERROR_MEANINGS
from tests.harness import ROOT

DOC = (ROOT / "docs" / "protocol.md").read_text()


def test_close_code_table_matches_the_code():
    rows = re.findall(r"^\| (\d{4}) \| (\w+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", DOC, re.MULTILINE)
    documented = {int(code): (name, reason.strip(), action.strip(), meaning.strip())
                  for code, name, reason, action, meaning in rows}
    expected = {int(code): (code.name, info.reason, info.action.value, info.meaning)
                for code, info in CLOSE_CODES.items()}
    assert documented == expected


def test_error_code_table_matches_the_code():
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|$", DOC, re.MULTILINE))
    assert {code: meaning.strip() for code, meaning in rows.items()} == {
        code.value: meaning for code, meaning in ERROR_MEANINGS.items()}
