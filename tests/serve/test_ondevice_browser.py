"""On-device analysis in a real browser: the model runs in the page (ONNX Runtime Web) and the
photo is never sent anywhere. Playwright drives Debian's chromium against a real server."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import ARGS, CHROMIUM, axe_problems, playwright_api, split_photo_id
from tests.conftest import HAM_DIR
from tests.webserver import dermalab_server

JPEG_SOI = b"\xff\xd8\xff"


@pytest.fixture(scope="module")
def exported_run(skin_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the small HAM10000 run with its ONNX export (the shared run stays PyTorch)."""
    from dermalab.deploy.export import export_onnx

    run = tmp_path_factory.mktemp("ondevice") / "skin"
    shutil.copytree(skin_run, run, ignore=shutil.ignore_patterns("history.db", "uploads"))
    export_onnx(run)
    return run


@pytest.fixture(scope="module")
def server(exported_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with dermalab_server(exported_run, tmp_path_factory.mktemp("web_ondevice")) as url:
        yield url


def _record(page: Any) -> list[dict[str, Any]]:
    """Every request the page makes from now on: method, path, body size, whether the body
    holds JPEG data."""
    seen: list[dict[str, Any]] = []

    def on_request(req: Any) -> None:
        body = req.post_data_buffer or b""
        seen.append({"method": req.method, "url": req.url, "bytes": len(body),
                     "jpeg": JPEG_SOI in body})

    page.on("request", on_request)
    return seen


#: The page's latest on-device analysis, as kept in this browser.
LOCAL_LATEST = ("import('/static/ondevice/run.js').then(m => m.history()).then(h => h[0].facts)")


def _same_photo_on_the_server(page: Any) -> dict[str, Any]:
    """Analyse the chosen photo again with on-device analysis off; the server's stored
    answer."""
    page.uncheck("#ondevice")
    page.click("#analyse")
    page.wait_for_selector("#history tr", timeout=120_000)
    result: dict[str, Any] = page.evaluate(
        "fetch('/v1/analyses?limit=1').then(r => r.json()).then(b => "
        "fetch('/v1/analyses/' + b.items[0].id)).then(r => r.json())")
    return result


def test_analyse_on_this_device_and_nothing_is_uploaded(server: str, exported_run: Path
                                                        ) -> None:
    sync_api = playwright_api()
    photo = HAM_DIR / "images" / f"{split_photo_id(exported_run, 1)}.jpg"
    shot = exported_run / "web_ondevice_390.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(server)
        assert page.evaluate("crossOriginIsolated")  # COOP + COEP: WebAssembly threads
        page.wait_for_selector("#ondevice-field:not([hidden])")
        page.check("#ondevice")
        # Age, sex and body site are weighed on the device as on the server.
        page.wait_for_selector("#about-field:not([hidden])")
        page.click("#about-field summary")
        page.fill("#age", "70")
        page.select_option("#sex", "male")
        page.select_option("#site", "back")
        page.set_input_files("#file", str(photo))
        requests = _record(page)
        page.click("#analyse")
        page.wait_for_selector("#result:not([hidden])", timeout=120_000)
        assert page.locator("#bars .bar").count() >= 1
        assert "not uploaded" in page.locator("#routing").inner_text()
        assert page.eval_on_selector("#heatmap", "img => img.naturalWidth") == 224
        assert "not a diagnosis" in page.locator("#result-disclaimer").inner_text()
        page.wait_for_selector("#local-history tr")
        page.screenshot(path=str(shot), full_page=True)

        # Nothing of the photo left the page, and nothing went to the analyses API.
        assert requests, "the model files are fetched on first use"
        assert not [r for r in requests if r["jpeg"] or r["bytes"] > 0], requests
        assert not [r for r in requests if "/v1/analyses" in r["url"]], requests
        assert page.evaluate("fetch('/v1/analyses').then(r => r.json()).then(b => b.total)") \
            == 0

        # The same photo on the server gives the same answer.
        local = page.evaluate(LOCAL_LATEST)
        server_side = _same_photo_on_the_server(page)
        assert local["verdict"] == server_side["verdict"]
        assert [c["class_name"] for c in local["conditions"]] == \
            [c["class_name"] for c in server_side["conditions"]]
        for a, b in zip(local["conditions"], server_side["conditions"], strict=True):
            assert abs(a["probability"] - b["probability"]) < 1e-3
        assert abs(local["ood_score"] - server_side["ood_score"]) \
            < 1e-3 * server_side["ood_score"]
        assert abs(local["ood_colour_score"] - server_side["ood_colour_score"]) < 1e-6
        assert local["metadata_used"] == server_side["metadata_used"] == [
            "age", "sex", "localization"]
        assert local["uncertain_threshold"] == server_side["uncertain_threshold"]

        # Deleting it on the device removes it from this browser.
        page.locator("#local-history button", has_text="Delete").first.click()
        page.wait_for_selector("#local-empty:not([hidden])")
        assert page.evaluate(
            "import('/static/ondevice/run.js').then(m => m.history()).then(h => h.length)") == 0
        browser.close()
    assert shot.stat().st_size > 20_000


def test_installable_and_on_device_analysis_works_offline(server: str, exported_run: Path
                                                          ) -> None:
    """One visit with on-device analysis on, then the network goes: the page reloads from
    the service worker's cache and analyses a photo on the device."""
    sync_api = playwright_api()
    photo = HAM_DIR / "images" / f"{split_photo_id(exported_run, 2)}.jpg"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        context = browser.new_context(viewport={"width": 390, "height": 844})
        page = context.new_page()
        page.goto(server)
        manifest = page.evaluate("fetch('/manifest.webmanifest').then(r => r.json())")
        assert manifest["display"] == "standalone"
        assert {i["sizes"] for i in manifest["icons"]} == {"192x192", "512x512"}
        page.wait_for_selector("#ondevice-field:not([hidden])")
        page.check("#ondevice")
        page.wait_for_selector("#ondevice-field[data-ready='1']", timeout=120_000)
        assert page.evaluate("navigator.serviceWorker.controller !== null")

        context.set_offline(True)
        uncaught: list[str] = []
        page.on("pageerror", lambda e: uncaught.append(str(e)))
        page.reload()
        page.wait_for_selector("#ondevice-field:not([hidden])", timeout=30_000)
        assert page.is_checked("#ondevice")  # the choice is remembered
        # Offline, the account card says why it is empty, and no request fails uncaught.
        sync_api.expect(page.locator("#account-status")).to_contain_text("You are offline")
        page.set_input_files("#file", str(photo))
        page.click("#analyse")
        page.wait_for_selector("#result:not([hidden])", timeout=120_000)
        assert "not uploaded" in page.locator("#routing").inner_text()
        assert page.locator("#bars .bar").count() >= 1 or "not look like" in \
            page.locator("#verdict").inner_text()
        page.screenshot(path=str(exported_run / "web_ondevice_offline_390.png"), full_page=True)
        # Offline in both languages at both widths: no serious accessibility violation; a
        # language chosen offline comes from the service worker's copy of its texts.
        problems = axe_problems(page, "en 390px offline result")
        page.set_viewport_size({"width": 1280, "height": 900})
        problems += axe_problems(page, "en 1280px offline result")
        page.select_option("#lang", "ko")
        page.wait_for_selector("html[lang=ko]", state="attached")
        sync_api.expect(page.locator("#analyse")).to_have_text(re.compile("[가-힣]"))
        problems += axe_problems(page, "ko 1280px offline result")
        page.set_viewport_size({"width": 390, "height": 844})
        problems += axe_problems(page, "ko 390px offline result")
        assert problems == []
        page.select_option("#lang", "en")
        page.wait_for_selector("html[lang=en]", state="attached")
        # With on-device analysis off, an upload cannot reach the server: the page says so
        # and points to the mode that works offline.
        page.uncheck("#ondevice")
        page.set_input_files("#file", str(photo))
        page.click("#analyse")
        sync_api.expect(page.locator("#status")).to_contain_text(
            "Could not reach the server. Switch on “Analyse on this device”")
        assert uncaught == [], uncaught
        browser.close()


@pytest.mark.slow
def test_the_page_routes_on_the_device_as_the_server_does(
        exported_run: Path, clinical_run: Path, router_dir: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two models and the image-type router behind one page: on the device, the router runs
    in the browser and sends a DermNet psoriasis photo to the model the server's router picks,
    with the server's verdict and conditions, and the photo is still not uploaded."""
    from dermalab.deploy.export import export_onnx
    from tests.served_runs import dermnet_photos

    sync_api = playwright_api()
    state = tmp_path_factory.mktemp("web_ondevice_router")
    clinical = state / "clinical"
    shutil.copytree(clinical_run, clinical, ignore=shutil.ignore_patterns("history.db",
                                                                          "uploads"))
    export_onnx(clinical)
    models = state / "models.yaml"
    models.write_text(f"models:\n  - run: {exported_run}\n  - run: {clinical}\n"
                      f"router: {router_dir}\n")
    photo = dermnet_photos("Psoriasis")[70]
    with dermalab_server(models, state) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(url)
        offer = page.evaluate("fetch('/v1/ondevice').then(r => r.json())")
        assert offer["router"] and len(offer["models"]) == 2
        page.wait_for_selector("#ondevice-field:not([hidden])")
        page.check("#ondevice")
        page.set_input_files("#file", str(photo))
        requests = _record(page)
        page.click("#analyse")
        page.wait_for_selector("#result:not([hidden])", timeout=120_000)
        local = page.evaluate(LOCAL_LATEST)
        assert not [r for r in requests if r["jpeg"] or r["bytes"] > 0], requests
        assert local["routing"]["chosen_by"] == "router"

        server_side = _same_photo_on_the_server(page)
        assert server_side["routing"]["chosen_by"] == "router"
        assert local["model"]["name"] == server_side["model"]["name"]
        for t, p_server in server_side["routing"]["probabilities"].items():
            assert abs(local["routing"]["probabilities"][t] - p_server) < 1e-3, t
        assert local["verdict"] == server_side["verdict"]
        assert [c["class_name"] for c in local["conditions"]] == \
            [c["class_name"] for c in server_side["conditions"]]
        browser.close()
