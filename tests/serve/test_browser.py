"""The web page in a real browser: Playwright driving Debian's chromium against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HAM_DIR
from tests.webserver import dermalab_server

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(skin_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with dermalab_server(skin_run, tmp_path_factory.mktemp("web")) as url:
        yield url


@pytest.mark.parametrize("viewport", [{"width": 1200, "height": 900},
                                      {"width": 390, "height": 844}], ids=["desktop", "phone"])
def test_upload_and_see_the_result(server: str, skin_run: Path, viewport: dict,
                                   tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not installed (.ci/run installs it)")
    import csv

    with open(skin_run / "splits.csv") as f:
        test_id = next(r["sample_id"] for r in csv.DictReader(f) if r["split"] == "test")
    photo = HAM_DIR / "images" / f"{test_id}.jpg"
    shot = skin_run / f"web_{viewport['width']}.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport=viewport)
        page.goto(server)
        assert page.locator("#disclaimer").is_visible()
        page.set_input_files("#file", str(photo))
        page.click("#analyse")
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        assert page.locator("#bars .bar").count() >= 1
        width = page.eval_on_selector("#heatmap", "img => img.naturalWidth")
        assert width >= 96
        assert page.locator("#referral").inner_text().strip()
        assert "not a diagnosis" in page.locator("#result-disclaimer").inner_text()
        page.wait_for_selector("#history tr")
        assert page.locator("#history tr").count() >= 1
        # Nothing overflows sideways on a phone.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 20_000
