"""Screenshots of the web page for the docs, from a real trained run, at phone width.

    .venv/bin/python scripts/screenshots.py RUN_DIR PHOTO [PHOTO_2] [--out docs/img]

Starts ``dermalab serve RUN_DIR`` on a free loopback port (history in a temporary folder),
drives Debian's chromium with Playwright at 390x844 and writes ``result_390.png`` (the result
card after analysing PHOTO, named as a spot), ``spot_390.png`` (that spot over time with the
comparison of its two photos, after PHOTO_2 or PHOTO again), ``upload_390.png`` (the page as
a first visitor sees it) and ``bodymap_390.png`` (the body map, opened).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.webserver import dermalab_server  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("photos", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    first, second = args.photos[0], args.photos[-1]
    with tempfile.TemporaryDirectory() as tmp, \
            dermalab_server(args.run_dir, Path(tmp),
                            extra_args=("--clinics", str(REPO / "examples" /
                                                         "clinics.example.yaml"))) as url, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844}, has_touch=True,
                                device_scale_factor=2)
        page.goto(url)
        page.wait_for_selector("#account-status:not(:empty)")
        page.screenshot(path=str(args.out / "upload_390.png"))
        page.click("#body-map-field summary")
        page.locator("#body-map-field").screenshot(path=str(args.out / "bodymap_390.png"))
        page.click("#body-map-field summary")
        for photo in (first, second):
            page.set_input_files("#file", str(photo))
            page.fill("#spot", "left shoulder mole")
            page.click("#analyse")
            page.wait_for_selector("#result:not([hidden])", timeout=120_000)
            page.wait_for_timeout(800)  # the smooth scroll to the result
        page.locator("#result").screenshot(path=str(args.out / "result_390.png"))
        page.click("#see-spot")
        page.wait_for_function("() => [...document.querySelectorAll('#spot-view img')]"
                               ".every(i => i.naturalWidth > 0)")
        page.locator("#spot-view").screenshot(path=str(args.out / "spot_390.png"))
        browser.close()
    print("wrote", *(str(args.out / n) for n in ("upload_390.png", "bodymap_390.png",
                                                  "result_390.png", "spot_390.png")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
