"""The spot reminder's calendar file, made in the browser (static/reminder.js), run by node."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_reminder_is_a_valid_monthly_calendar_event() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed for the page's JavaScript tests (.ci/run installs it)")
    proc = subprocess.run([node, "--test", str(ROOT / "tests" / "js" / "reminder.test.mjs")],
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout and "# pass 3" in proc.stdout
