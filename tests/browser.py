"""Helpers the browser tests share: Playwright's sync API driving Debian's chromium (never a
downloaded browser), a test photo of a run's split, and the axe-core audit."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def playwright_api() -> Any:
    """Playwright's sync API, or skip when it or Debian's chromium is missing."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not installed (.ci/run installs it)")
    return sync_api


def split_photo_id(run: Path, k: int) -> str:
    """The ``k``-th test image of the run's split."""
    with open(run / "splits.csv") as f:
        return [r["sample_id"] for r in csv.DictReader(f) if r["split"] == "test"][k]


def axe_problems(page: Any, state: str) -> list[str]:
    """Serious and critical axe-core violations on the page as it is now, one line each."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page).response  # injected by evaluate(), so the page's CSP allows it
    return [f"{state}: {v['id']} ({v['impact']}) on "
            f"{', '.join(str(n['target']) for n in v['nodes'][:3])}: {v['help']}"
            for v in results["violations"] if v["impact"] in ("serious", "critical")]
