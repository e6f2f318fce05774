"""The page's own JavaScript that has no server twin, run by node: the spot reminder's calendar
file (static/reminder.js) and the body map's regions (static/bodymap.js)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("script", "tests"), [("reminder.test.mjs", 3), ("bodymap.test.mjs", 3)])
def test_the_page_javascript(script: str, tests: int) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed for the page's JavaScript tests (.ci/run installs it)")
    proc = subprocess.run([node, "--test", str(ROOT / "tests" / "js" / script)],
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout and f"# pass {tests}" in proc.stdout
