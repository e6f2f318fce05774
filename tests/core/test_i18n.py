"""The message catalogue: complete in every language, same placeholders, and every key the page
and the service use exists."""

from __future__ import annotations

import re
from importlib import resources

import pytest
import yaml

from dermalab.core.i18n import LANGUAGES, catalogue, messages, negotiate, placeholders, t

CONDITION_FIELDS = ("name", "description", "care", "see_doctor")


def test_every_message_exists_in_every_language_with_the_same_placeholders() -> None:
    for key, entry in catalogue().items():
        assert set(entry) == set(LANGUAGES), key
        assert all(entry[lang].strip() for lang in LANGUAGES), key
        fields = {lang: placeholders(entry[lang]) for lang in LANGUAGES}
        assert len({frozenset(f) for f in fields.values()}) == 1, (key, fields)


def test_every_condition_has_every_field_in_every_language() -> None:
    text = resources.files("dermalab.serve").joinpath("conditions.yaml").read_text("utf-8")
    for key, entry in yaml.safe_load(text).items():
        for lang in LANGUAGES:
            local = entry if lang == "en" else entry.get(lang, {})
            for field in CONDITION_FIELDS:
                assert str(local.get(field, "")).strip(), (key, lang, field)
                assert not placeholders(str(local[field])), (key, lang, field)
        assert re.search(r"[가-힣]", entry["ko"]["name"]), key  # Korean, not a copy


def test_the_page_and_the_service_use_only_keys_that_exist() -> None:
    static = resources.files("dermalab.serve").joinpath("static")
    page = static.joinpath("index.html").read_text("utf-8")
    script = static.joinpath("app.js").read_text("utf-8")
    used = set(re.findall(r'data-i18n(?:-(?:alt|placeholder))?="([\w.\-]+)"', page))
    used |= {k for k in re.findall(r'msg\("([\w.\-]+)"', page + script)
             if not k.endswith("_")}  # "page.ref_" + a referral: listed below
    used |= {f"page.ref_{r}" for r in ("urgent", "routine", "self-care", "none")}
    used |= {"page.not_sure", "page.top"}
    used |= {f"page.field_{f}" for f in ("age", "sex", "localization")}  # "page.field_" + f
    from dermalab.segment.measure import DERMOSCOPIC_COLOURS

    used |= {f"page.colour_{c}" for c in DERMOSCOPIC_COLOURS}  # the page shows each by name
    assert used <= set(catalogue()), used - set(catalogue())
    serve = resources.files("dermalab.serve")
    routers = serve.joinpath("routers")
    service = serve.joinpath("service.py").read_text("utf-8") + "".join(
        f.read_text("utf-8") for f in routers.iterdir() if f.name.endswith(".py"))
    keys = set(re.findall(r'"((?:verdict|referral|upload|condition|spot|clinics)\.[\w.\-]+)"',
                          service))
    keys |= {f"referral.{r}" for r in ("urgent", "routine", "self-care", "not_skin",
                                       "malignant", "uncertain")}
    assert keys and keys <= set(catalogue()), keys - set(catalogue())


@pytest.mark.parametrize(("header", "choice", "want"), [
    ("ko-KR,ko;q=0.9,en-US;q=0.8,en;q=0.7", None, "ko"),
    ("en-US,en;q=0.9,ko;q=0.8", None, "en"),
    ("fr-CH, fr;q=0.9, ko;q=0.5", None, "ko"),
    ("ko;q=0, en;q=0.1", None, "en"),
    ("*", None, "en"), ("", None, "en"), (None, None, "en"), ("ko;q=abc", None, "en"),
    ("en", "ko-KR", "ko"), ("ko", "xx", "ko"),
])
def test_negotiate(header: str | None, choice: str | None, want: str) -> None:
    assert negotiate(header, choice) == want


def test_t_fills_fields_and_page_messages_are_a_subset() -> None:
    assert t("verdict.ok", "ko", name="흑색종", probability="81%") == \
        "가장 가능성이 높은 것: 흑색종 (81%)."
    page = messages("ko", "page.")
    assert page and all(k.startswith("page.") for k in page)
    assert page["page.title"] == "dermalab – 피부 사진 확인"
