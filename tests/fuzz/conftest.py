"""Counts of mutated inputs per reader, printed at the end and saved as JSON on request.

``ASTROBATCH_FUZZ_EXAMPLES`` raises the number of hypothesis examples per reader;
``ASTROBATCH_FUZZ_REPORT`` names a JSON file that receives the counts.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import pytest

#: reader -> {"mutated": n, "ok": n, "input_error": n, "foreign": n}
COUNTS: dict[str, dict[str, int]] = defaultdict(
    lambda: {"mutated": 0, "ok": 0, "input_error": 0, "foreign": 0}
)


@pytest.fixture(scope="session")
def fuzz_counts() -> dict[str, dict[str, int]]:
    """The session's counters (reader -> outcome counts)."""
    return COUNTS


def _write_report() -> None:
    out = os.environ.get("ASTROBATCH_FUZZ_REPORT")
    if out and COUNTS:
        with open(out, "w") as fh:
            json.dump(dict(sorted(COUNTS.items())), fh, indent=2, sort_keys=True)


@pytest.fixture(scope="session", autouse=True)
def _fuzz_report():
    yield
    _write_report()


def pytest_runtest_logfinish(nodeid, location):
    _write_report()  # after every test, so a long run killed midway still leaves counts


def pytest_terminal_summary(terminalreporter):
    if not COUNTS:
        return
    tr = terminalreporter
    tr.section("fuzz: mutated inputs per reader")
    for name, c in sorted(COUNTS.items()):
        tr.write_line(
            f"{name:24s} mutated={c['mutated']:6d} ok={c['ok']:6d} "
            f"input_error={c['input_error']:6d} foreign={c['foreign']:4d}"
        )
