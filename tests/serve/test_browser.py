"""The web page in a real browser: Playwright driving Debian's chromium against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.browser import ARGS, CHROMIUM, axe_problems, playwright_api, split_photo_id
from tests.conftest import HAM_DIR
from tests.webserver import dermalab_server


@pytest.fixture(scope="module")
def server(skin_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    clinics = Path(__file__).parents[2] / "examples" / "clinics.example.yaml"
    with dermalab_server(skin_run, tmp_path_factory.mktemp("web"),
                         extra_args=("--clinics", str(clinics))) as url:
        yield url


@pytest.mark.parametrize("viewport", [{"width": 1200, "height": 900},
                                      {"width": 390, "height": 844}], ids=["desktop", "phone"])
def test_upload_and_see_the_result(server: str, skin_run: Path, viewport: dict,
                                   tmp_path: Path) -> None:
    sync_api = playwright_api()

    test_id = split_photo_id(skin_run, 0)
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
        assert not page.locator("#type-field").is_visible()  # one model: nothing to choose
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


def test_the_page_in_korean_at_phone_width(server: str, skin_run: Path) -> None:
    """A Korean phone (locale ko-KR): the page, verdict, referral and care text are Korean,
    percentages are formatted for the locale and nothing overflows sideways."""
    sync_api = playwright_api()
    import re

    hangul = re.compile(r"[가-힣]")
    test_id = split_photo_id(skin_run, 1)
    shot = skin_run / "web_390_ko.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844}, locale="ko-KR")
        page.goto(server)
        page.wait_for_selector("html[lang=ko]", state="attached")
        assert page.locator("#analyse").inner_text() == "사진 분석하기"
        assert hangul.search(page.locator("#disclaimer").inner_text())
        # The optional age / body site (this model weighs them), offered in Korean.
        page.wait_for_selector("#about-field:not([hidden])")
        page.click("#about-field summary")
        assert page.locator("#site option[value=back]").inner_text() == "등"
        page.fill("#age", "60")
        page.select_option("#site", "back")
        page.set_input_files("#file", str(HAM_DIR / "images" / f"{test_id}.jpg"))
        page.click("#analyse")
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        assert page.locator("#about-used").inner_text() == "함께 고려한 정보: 나이, 부위."
        for sel in ("#verdict", "#referral", "#result-disclaimer", "#info summary"):
            assert hangul.search(page.locator(sel).first.inner_text()), sel
        page.locator("#info details").first.click()  # open the care text for the screenshot
        assert hangul.search(page.locator("#info details p").nth(1).inner_text())
        assert re.search(r"\d+%", page.locator("#bars .label").first.inner_text())
        page.wait_for_selector("#history tr")
        assert hangul.search(page.locator("#history tr").first.inner_text())
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        page.screenshot(path=str(shot), full_page=True)
        # Switching to English re-renders the same result, and the choice is remembered.
        page.select_option("#lang", "en")
        page.wait_for_selector("html[lang=en]", state="attached")
        sync_api.expect(page.locator("#verdict")).not_to_have_text(hangul)
        page.reload()
        page.wait_for_selector("html[lang=en]", state="attached")
        assert page.locator("#analyse").inner_text() == "Analyse photo"
        browser.close()
    assert shot.stat().st_size > 20_000


def test_sign_up_analyse_sign_out_and_it_is_gone(server: str, skin_run: Path) -> None:
    """A visitor gets a private device session, creates an account (the device's analysis
    moves into it), signs out, and the page and the API then show nothing of it."""
    sync_api = playwright_api()

    test_id = split_photo_id(skin_run, 2)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(server)
        sync_api.expect(page.locator("#account-status")).to_contain_text("private to this device")
        page.set_input_files("#file", str(HAM_DIR / "images" / f"{test_id}.jpg"))
        page.click("#analyse")
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        analysis_id = page.evaluate("fetch('/v1/analyses').then(r => r.json())")["items"][0]["id"]
        page.fill("#email", "browser@example.org")
        page.fill("#password", "a long password")
        page.click("#sign-up")
        sync_api.expect(page.locator("#account-status")).to_contain_text(
            "Signed in as browser@example.org")
        sync_api.expect(page.locator("#history tr")).to_have_count(1)  # moved into the account
        # A second photo under a named spot, then that spot's history.
        page.set_input_files("#file", str(HAM_DIR / "images" / f"{test_id}.jpg"))
        page.fill("#spot", "left shoulder mole")
        page.click("#analyse")
        sync_api.expect(page.locator("#history tr")).to_have_count(2)
        sync_api.expect(page.locator("#spots li")).to_have_count(1)
        page.click("#see-spot")
        sync_api.expect(page.locator("#spot-title")).to_contain_text("left shoulder mole")
        sync_api.expect(page.locator("#spot-timeline figure")).to_have_count(1)
        page.wait_for_function(
            "() => document.querySelector('#spot-timeline img').naturalWidth > 0")
        assert page.locator("#spot-compare").is_hidden()  # one photo: nothing to compare
        # A second photo of the spot: the earlier and the latest one over the other, the
        # slider (by keyboard) uncovering the latest.
        page.set_input_files("#file", str(HAM_DIR / "images" / f"{test_id}.jpg"))
        page.fill("#spot", "left shoulder mole")
        page.click("#analyse")
        sync_api.expect(page.locator("#history tr")).to_have_count(3)
        page.click("#see-spot")
        sync_api.expect(page.locator("#spot-timeline figure")).to_have_count(2)
        sync_api.expect(page.locator("#spot-compare")).to_be_visible()
        page.wait_for_function("() => ['#compare-before', '#compare-after'].every("
                               "s => document.querySelector(s).naturalWidth > 0)")
        assert page.locator("#compare-before").get_attribute("alt").startswith("Earlier photo")
        page.focus("#compare-slider")
        for _ in range(5):
            page.keyboard.press("ArrowRight")
        assert page.evaluate("document.querySelector('#compare-after').style.clipPath") \
            == "inset(0px 0px 0px 55%)"
        spot_id = page.evaluate("fetch('/v1/spots').then(r => r.json())")["items"][0]["id"]
        # The monthly reminder: a calendar file made in the page, naming neither the spot nor
        # a result.
        with page.expect_download() as dl:
            page.click("#spot-reminder")
        assert dl.value.suggested_filename == "dermalab-reminder.ics"
        ics = Path(dl.value.path()).read_text("utf-8")
        assert "RRULE:FREQ=MONTHLY;INTERVAL=1" in ics and "BEGIN:VALARM" in ics
        assert "SUMMARY:Time to photograph your skin spot again" in ics
        assert "shoulder" not in ics and "%" not in ics
        page.click("#sign-out")
        sync_api.expect(page.locator("#account-status")).to_contain_text("private to this device")
        sync_api.expect(page.locator("#history-empty")).to_be_visible()
        status = page.evaluate(f"fetch('/v1/analyses/{analysis_id}').then(r => r.status)")
        assert status == 404  # the new device session cannot reach the account's analysis
        photo = page.evaluate(f"fetch('/v1/analyses/{analysis_id}/photo').then(r => r.status)")
        assert photo == 404
        assert page.evaluate(f"fetch('/v1/spots/{spot_id}').then(r => r.status)") == 404
        sync_api.expect(page.locator("#spots-empty")).to_be_visible()
        assert page.locator("#spot-view").is_hidden()
        # Deleting the account asks for its password again; a wrong one deletes nothing.
        page.fill("#email", "browser@example.org")
        page.fill("#password", "a long password")
        page.click("#sign-in")
        sync_api.expect(page.locator("#account-status")).to_contain_text("Signed in as")
        page.on("dialog", lambda d: d.accept())
        page.click("#delete-account")
        sync_api.expect(page.locator("#delete-password")).to_be_visible()
        page.fill("#delete-password", "not my password")
        page.click("#delete-account")
        sync_api.expect(page.locator("#account-error")).to_have_text(
            "wrong password; the account was not deleted")
        sync_api.expect(page.locator("#history tr")).to_have_count(3)
        page.fill("#delete-password", "a long password")
        page.click("#delete-account")
        sync_api.expect(page.locator("#account-status")).to_contain_text("private to this device")
        gone = page.evaluate("fetch('/v1/auth/signin', {method: 'POST', headers: {'Content-Type':"
                             " 'application/json', 'X-Dermalab-Page': '1'}, body: JSON.stringify("
                             "{email: 'browser@example.org', password: 'a long password'})})"
                             ".then(r => r.status)")
        assert gone == 401
        browser.close()
    assert not [e for e in errors if "Content Security Policy" in e], errors


def test_the_page_works_by_keyboard_and_keeps_each_photo_apart(server: str, skin_run: Path,
                                                             tmp_path: Path) -> None:
    """Defects 3, 4, 7, 8 and 11 of the page walk-through (issue 51), on a phone: the photo
    picker is reached by Tab; a first visitor is not offered "delete my account"; inputs are
    at least 16 px (no zoom on focus) and 44 px tall; the result is brought into view; the
    spot name does not stick to the next photo; a file that is not a photo is said at once,
    with Analyse disabled and the previous result gone."""
    sync_api = playwright_api()

    photo = HAM_DIR / "images" / f"{split_photo_id(skin_run, 3)}.jpg"
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844}, has_touch=True)
        page.goto(server)
        sync_api.expect(page.locator("#account-status")).to_contain_text("private to this device")
        assert page.locator("#delete-account").is_hidden()
        assert page.locator("#export").is_hidden()
        page.focus("#lang")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "file"
        for sel in ("#email", "#password", "#spot", "#lang"):
            size, height = page.eval_on_selector(
                sel, "e => [parseFloat(getComputedStyle(e).fontSize), "
                     "e.getBoundingClientRect().height]")
            assert size >= 16 and height >= 44, (sel, size, height)
        page.set_input_files("#file", str(photo))
        page.fill("#spot", "left shoulder mole")
        page.click("#analyse")
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        page.wait_for_function("() => Math.abs(document.querySelector('#result')"
                               ".getBoundingClientRect().top) < 80")
        assert page.evaluate("document.activeElement.id") == "verdict"
        assert page.input_value("#spot") == ""
        assert page.locator("#delete-account").is_visible()  # now there is something to delete
        # Defect 9: the heat-map is an optional view of the photo, in the photo's shape.
        assert page.locator("#heatmap").is_hidden() and page.locator("#photo").is_visible()
        page.click("#heat-toggle")
        assert page.locator("#heatmap").is_visible() and page.locator("#photo").is_hidden()
        assert page.get_attribute("#heat-toggle", "aria-pressed") == "true"
        shown = page.eval_on_selector("#heatmap", "i => i.getBoundingClientRect().width / "
                                                  "i.getBoundingClientRect().height")
        w, h = Image.open(photo).size
        assert abs(shown - w / h) < 0.02 * (w / h), (shown, w / h)
        page.set_input_files("#file", str(notes))
        sync_api.expect(page.locator("#status .error")).to_contain_text("notes.txt is not a photo")
        assert page.locator("#analyse").is_disabled()
        assert page.locator("#result").is_hidden()
        assert page.locator("#preview").is_hidden()
        browser.close()


def test_find_a_dermatologist_near_me(server: str, skin_run: Path) -> None:
    """After a result, the person allows their location (granted here, placed in Busan) and
    the nearest clinics of the directory are listed, nearest first; a typed city works too."""
    sync_api = playwright_api()

    test_id = split_photo_id(skin_run, 1)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        context = browser.new_context(viewport={"width": 390, "height": 844},
                                      geolocation={"latitude": 35.10, "longitude": 129.03},
                                      permissions=["geolocation"])
        page = context.new_page()
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(server)
        page.set_input_files("#file", str(HAM_DIR / "images" / f"{test_id}.jpg"))
        page.click("#analyse")
        try:
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        except Exception:
            raise AssertionError(page.locator("#status").inner_text()) from None
        if page.locator("#clinics-box").is_hidden():  # a not-skin verdict has no referral
            pytest.skip("the small test model called this photo not-skin")
        sync_api.expect(page.locator("#clinic-advice")).to_contain_text("dermatologist")
        page.click("#use-location")
        sync_api.expect(page.locator("#clinic-list li")).to_have_count(3)
        assert "Department C" in page.locator("#clinic-list li").first.inner_text()
        assert "km" in page.locator("#clinic-list li").first.inner_text()
        page.fill("#city", "SEOUL")
        page.click("#city-form button")
        sync_api.expect(page.locator("#clinic-list li").first).to_contain_text("Seoul")
        context.close()
        browser.close()
    elsewhere = [u for u in requests if not u.startswith((server, "blob:", "data:"))]
    assert not elsewhere, elsewhere  # nothing from another origin


def test_a_phone_photo_of_a_rash_meets_the_clinical_model(
        skin_run: Path, clinical_run: Path, router_dir: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Both models behind one page (a models file): a DermNet psoriasis photo is answered
    with conditions by the clinical-photo model, and the page says which model answered."""
    from tests.served_runs import dermnet_photos

    sync_api = playwright_api()
    state = tmp_path_factory.mktemp("web2")
    models = state / "models.yaml"
    models.write_text(f"models:\n  - run: {skin_run}\n  - run: {clinical_run}\n"
                      f"router: {router_dir}\n")
    photo = dermnet_photos("Psoriasis")[70]
    shot = clinical_run / "web_clinical_390.png"
    with dermalab_server(models, state) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(url)
        page.wait_for_selector("#type-field:not([hidden])")  # two models: the type choice
        assert page.locator("#image-type").input_value() == "auto"
        page.set_input_files("#file", str(photo))
        page.click("#analyse")
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        assert page.locator("#bars .bar").count() >= 1  # conditions, not "not skin"
        assert "clinical-photo model" in page.locator("#routing").inner_text()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        page.screenshot(path=str(shot), full_page=True)
        # the person's word overrides the router
        page.select_option("#image-type", "dermoscopic")
        page.click("#analyse")
        # (the page's CSP forbids evaluated strings, so wait on a text selector)
        page.wait_for_selector("#routing:has-text('as you said')", timeout=60_000)
        assert "dermoscopy model" in page.locator("#routing").inner_text()
        browser.close()
    assert shot.stat().st_size > 20_000


@pytest.mark.parametrize("locale", ["en-GB", "ko-KR"])
def test_no_serious_accessibility_violation_in_any_state(server: str, skin_run: Path,
                                                         locale: str) -> None:
    """axe-core on first visit, the body map, the result, a spot's history with its
    comparison and the signed-in account, at phone and desktop width, in English and Korean:
    no serious or critical violation."""
    sync_api = playwright_api()

    photo = HAM_DIR / "images" / f"{split_photo_id(skin_run, 4)}.jpg"
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        for width, height in ((390, 844), (1280, 900)):
            page = browser.new_page(viewport={"width": width, "height": height}, locale=locale)
            errors: list[str] = []
            page.on("console", lambda m, e=errors: e.append(m.text) if m.type == "error" else None)
            page.goto(server)
            page.wait_for_selector(f"html[lang={locale[:2]}]", state="attached")
            sync_api.expect(page.locator("#account-status")).not_to_be_empty()
            problems += axe_problems(page, f"{locale} {width}px first visit")
            assert errors == [], errors  # a first visit is not an error (no 401 logged)
            # The body map, by keyboard: Tab from its summary reaches a region, Enter on the
            # upper back names the spot after it.
            page.click("#body-map-field summary")
            page.focus("#body-map-field summary")
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.getAttribute('role')") == "button"
            page.focus("#body-map .region[data-part=upper_back]")
            page.keyboard.press("Enter")
            want = {"en": "Upper back", "ko": "등 위쪽"}[locale[:2]]
            assert page.input_value("#spot") == want
            assert page.get_attribute("#body-map .region[data-part=upper_back]",
                                      "aria-pressed") == "true"
            problems += axe_problems(page, f"{locale} {width}px body map")
            page.set_input_files("#file", str(photo))
            page.fill("#spot", "left arm")
            page.click("#analyse")
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            problems += axe_problems(page, f"{locale} {width}px result")
            page.set_input_files("#file", str(photo))  # a second photo: the comparison shows
            page.fill("#spot", "left arm")
            page.click("#analyse")
            sync_api.expect(page.locator("#history tr")).to_have_count(2, timeout=60_000)
            page.click("#see-spot")
            page.wait_for_selector("#spot-compare:not([hidden])")
            problems += axe_problems(page, f"{locale} {width}px spot history and comparison")
            page.fill("#email", f"a11y{width}{locale[:2]}@example.org")
            page.fill("#password", "a long password")
            page.click("#sign-up")
            page.wait_for_selector("#sign-out:not([hidden])")
            problems += axe_problems(page, f"{locale} {width}px account")
            page.close()
        browser.close()
    assert problems == []
