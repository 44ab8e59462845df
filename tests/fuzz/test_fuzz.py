"""schemathesis finds nothing: no 5xx, no timeout, every answer as documented (issue 10).

Runs ``python -m tests.fuzz.run`` (``make fuzz`` runs the same by hand): the real daemon with
embedded PostgreSQL and S3, fuzzed as a user, an admin, a service and a signing node. Bounded
by ``MAX_EXAMPLES`` cases per operation and a fixed seed so CI stays within its time budget.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = 25


@pytest.mark.slow
def test_schemathesis_finds_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [sys.executable, "-m", "tests.fuzz.run", "--max-examples", str(MAX_EXAMPLES)]
    run = subprocess.run(
        [*argv, "--keep", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = run.stdout[run.stdout.find("schemathesis against") :]
    with capsys.disabled():
        print("\n" + summary.split("\n--- ", 1)[0][:3000])
    assert run.returncode == 0, run.stdout[-30000:] + run.stderr[-5000:]
