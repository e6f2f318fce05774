"""A spot over time: its stored analyses as a timeline, the warning when the malignant score
crosses its line, and the spot's advice after the last photo.

Pure functions of the stored analyses (no model, no store), so the service only fetches the
rows and names the conditions; ``tests/serve/test_timeline.py`` checks them on plain rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from dermalab.core.i18n import t
from dermalab.serve.answer import ADVICE_BAND, percent, spot_urgency
from dermalab.serve.store import Analysis

#: The name of a condition in a language: ``(class_name, lang) -> name``.
ConditionName = Callable[[str, str], str]


def timeline_entries(rows: list[Analysis], lang: str, name_of: ConditionName
                     ) -> list[dict[str, Any]]:
    """One entry per analysis, oldest first: its verdict and referral, the top condition (named
    in ``lang``), the malignant probability and line, whether it is at or above the line and
    whether it ``crossed`` it (the previous photo was scored below, this one at or above)."""
    entries: list[dict[str, Any]] = []
    for r in rows:
        res = json.loads(r.result_json)
        top = res["conditions"][0] if res["conditions"] else None
        mal_p, mal_t = res.get("malignant_probability"), res.get("malignant_threshold")
        prev = entries[-1] if entries else None
        above = mal_p is not None and mal_t is not None and mal_p >= mal_t
        entries.append({
            "id": r.id, "created_at": res["created_at"], "verdict": r.verdict,
            "referral": r.referral,
            "top_condition": name_of(top["class_name"], lang) if top else None,
            "top_probability": top["probability"] if top else None,
            "malignant_probability": mal_p, "malignant_threshold": mal_t,
            "above_threshold": above if mal_p is not None else None,
            "crossed": bool(prev is not None and prev["above_threshold"] is False and above)})
    return entries


def crossing_warning(entries: list[dict[str, Any]], lang: str) -> str | None:
    """Said when the last photo crossed the line from below (the scores and the line in
    words), else None."""
    if len(entries) < 2 or not entries[-1]["crossed"]:
        return None
    last, before = entries[-1], entries[-2]
    return t("spot.crossed", lang, before=percent(before["malignant_probability"]),
             now=percent(last["malignant_probability"]),
             threshold=percent(last["malignant_threshold"]))


def spot_advice(entries: list[dict[str, Any]], lang: str) -> dict[str, Any]:
    """What changed since the previous photo, in words, and the spot's advice after the last
    one, with hysteresis (:func:`~dermalab.serve.answer.spot_urgency`): it stays urgent until
    the malignant probability falls clearly below the line, so a wavering score does not flip
    it; and it is urgent whenever the last scored photo's own referral was."""
    scored = [(e["malignant_probability"], e["malignant_threshold"]) for e in entries]
    urgent = spot_urgency(scored)[-1] if entries else None
    # An unscored last photo keeps the advice of the last scored one, and so its line.
    scored_entries = [e for e in entries if e["malignant_probability"] is not None
                      and e["malignant_threshold"] is not None]
    out: dict[str, Any] = {"advice": None, "advice_text": None, "change": None}
    if urgent is not None and scored_entries:
        last = scored_entries[-1]
        line = float(last["malignant_threshold"])
        # that photo's own urgent referral (a second opinion's, say) is never contradicted by
        # a routine advice for its spot
        urgent = urgent or last["referral"] == "urgent"
        out["advice"] = "urgent" if urgent else "routine"
        out["advice_text"] = t(f"spot.advice_{out['advice']}", lang, threshold=percent(line),
                               low=percent(max(0.0, line - ADVICE_BAND)))
    pair = [e for e in entries if e["malignant_probability"] is not None][-2:]
    if len(pair) == 2:
        out["change"] = t("spot.change", lang,
                          before=percent(pair[0]["malignant_probability"]),
                          now=percent(pair[1]["malignant_probability"]),
                          threshold=percent(pair[1]["malignant_threshold"]))
    return out


def spot_view(spot_id: str, name: str, rows: list[Analysis], lang: str,
              name_of: ConditionName) -> dict[str, Any]:
    """The spot as the API returns it: its analyses (:func:`timeline_entries`), the crossing
    warning, the change and advice (:func:`spot_advice`) and the disclaimer, in ``lang``."""
    entries = timeline_entries(rows, lang, name_of)
    return {"id": spot_id, "name": name, "analyses": entries,
            "warning": crossing_warning(entries, lang), **spot_advice(entries, lang),
            "disclaimer": t("disclaimer", lang), "language": lang}
