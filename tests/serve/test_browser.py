"""The web page in a real browser: Playwright driving Debian's chromium against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import HAM_DIR
from tests.s3server import free_ports

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(skin_run: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    port = free_ports(1)[0]
    tmp = tmp_path_factory.mktemp("web")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dermalab", "serve", str(skin_run), "--port", str(port),
         "--db", f"sqlite:///{tmp / 'h.db'}", "--images", str(tmp / "up")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"server did not start: {out[-2000:]}") from None
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


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
