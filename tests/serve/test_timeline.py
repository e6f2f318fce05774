"""The spot timeline on plain stored rows (no model, no server): entries, the crossing warning,
the advice with its hysteresis, unscored photos and urgent referrals below the line."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from dermalab.serve.answer import ADVICE_BAND
from dermalab.serve.store import Analysis
from dermalab.serve.timeline import spot_view

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _row(k: int, p: float | None, line: float | None = 0.4, referral: str | None = None,
         verdict: str = "ok", top: str | None = "nv") -> Analysis:
    """A stored analysis whose malignant score is ``p`` against ``line``; its referral is the
    one such a score gives unless ``referral`` says otherwise."""
    if referral is None:
        referral = "urgent" if p is not None and line is not None and p >= line else "routine"
    result = {"created_at": (T0 + timedelta(days=k)).isoformat(),
              "conditions": [{"class_name": top, "probability": 0.7}] if top else [],
              "malignant_probability": p, "malignant_threshold": line if p is not None else None}
    return Analysis(id=f"a{k}", created_at=T0 + timedelta(days=k), filename=f"{k}.jpg",
                    verdict=verdict, referral=referral, image_ref=f"a{k}.jpg", size_bytes=1,
                    result_json=json.dumps(result), owner_id=None, spot_id="s1")


def _names(cls: str, lang: str) -> str:
    return f"{cls}:{lang}"


def _view(rows: list[Analysis], lang: str = "en") -> dict:
    return spot_view("s1", "left arm", rows, lang, _names)


def test_entries_carry_the_scores_and_name_the_top_condition_in_the_language() -> None:
    v = _view([_row(0, 0.1), _row(1, 0.2, top=None, verdict="uncertain")], lang="ko")
    first, second = v["analyses"]
    assert (v["id"], v["name"], v["language"]) == ("s1", "left arm", "ko")
    assert first["top_condition"] == "nv:ko" and first["top_probability"] == 0.7
    assert second["top_condition"] is None and second["top_probability"] is None
    assert [e["above_threshold"] for e in v["analyses"]] == [False, False]
    assert v["disclaimer"]


def test_a_crossing_from_below_warns_with_both_scores_and_the_line() -> None:
    v = _view([_row(0, 0.30), _row(1, 0.55)])
    assert [e["crossed"] for e in v["analyses"]] == [False, True]
    assert "30%" in v["warning"] and "55%" in v["warning"] and "40%" in v["warning"]
    # staying above is not a new crossing; falling below warns of nothing
    assert _view([_row(0, 0.5), _row(1, 0.6)])["warning"] is None
    assert _view([_row(0, 0.5), _row(1, 0.2)])["warning"] is None
    # an unscored photo in between is not "below": no crossing is claimed across it
    assert _view([_row(0, None), _row(1, 0.6)])["analyses"][1]["crossed"] is False


def test_the_advice_keeps_urgent_within_the_band_below_the_line() -> None:
    line = 0.4
    just_below = line - ADVICE_BAND / 2
    assert _view([_row(0, 0.5), _row(1, just_below)])["advice"] == "urgent"
    assert _view([_row(0, 0.5), _row(1, line - 2 * ADVICE_BAND)])["advice"] == "routine"
    # starting below, a score just below the line is routine: the band only holds urgency
    assert _view([_row(0, 0.1), _row(1, just_below)])["advice"] == "routine"


def test_an_unscored_last_photo_keeps_the_advice_of_the_last_scored_one() -> None:
    v = _view([_row(0, 0.6), _row(1, None, top=None, verdict="not_skin", referral=None)])
    assert v["advice"] == "urgent" and "35%" in v["advice_text"]  # the lower line, 40 - 5
    assert _view([_row(0, None, referral=None)])["advice"] is None


def test_an_urgent_referral_below_the_line_makes_the_spot_urgent() -> None:
    """A second opinion refers a photo urgently although its own score is below its line."""
    assert _view([_row(0, 0.1), _row(1, 0.2, referral="urgent")])["advice"] == "urgent"
    assert _view([_row(0, 0.1), _row(1, 0.2)])["advice"] == "routine"


def test_the_change_compares_the_last_two_scored_photos() -> None:
    v = _view([_row(0, 0.10), _row(1, None, referral=None), _row(2, 0.25)])
    assert "10%" in v["change"] and "25%" in v["change"]
    assert _view([_row(0, 0.10)])["change"] is None
