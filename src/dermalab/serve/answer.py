"""The answer's rules and words, apart from any model or store: the verdict ("ok", "not sure",
"not skin"), the referral and why, which model answered, in the page's language. Each rule
has a twin in the page's on-device code (``static/ondevice/core.js``), tested against it."""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np
import yaml

from dermalab.core.i18n import t


def percent(p: float) -> str:
    """``0.812`` -> ``81%`` (the same in every supported language)."""
    return f"{p:.0%}"


def load_conditions() -> dict[str, dict[str, Any]]:
    """The curated condition information, indexed by class name and by every alias."""
    text = resources.files("dermalab.serve").joinpath("conditions.yaml").read_text("utf-8")
    raw: dict[str, dict[str, Any]] = yaml.safe_load(text)
    out: dict[str, dict[str, Any]] = {}
    for key, entry in raw.items():
        out[key] = entry
        for alias in entry.get("aliases", []):
            out.setdefault(str(alias), entry)
    return out


def routing_text(routing: dict[str, Any], lang: str) -> str:
    """Which model answered and why, in ``lang``."""
    kind = routing["image_type"]
    probs = routing.get("probabilities") or {}
    if kind == "not_skin":
        return t("routing.not_skin", lang, probability=percent(probs.get("not_skin", 1.0)))
    name, model = t(f"image_type.{kind}", lang), t(f"model.{kind}", lang)
    if routing.get("unserved"):
        found = routing["unserved"]
        return t("routing.unserved", lang, type=t(f"image_type.{found}", lang), model=model,
                 probability=percent(probs.get(found, 0.0)))
    if routing["chosen_by"] == "user":
        return t("routing.user", lang, type=name, model=model)
    if routing["chosen_by"] == "router":
        text = t("routing.router", lang, type=name, model=model,
                 probability=percent(probs.get(kind, 0.0)))
        second = routing.get("second_opinion")
        if second:
            text += " " + t("routing.second", lang, model=t(f"model.{second['image_type']}",
                                                            lang))
        return text
    return t("routing.single", lang, model=model)


def routed_type(served: list[str], probabilities: dict[str, float]) -> str:
    """The router's most probable type among the ``served`` ones (a router may know a type
    this service does not run); the first of equals. The page's twin: ``chooseType``."""
    return max(served, key=lambda k: probabilities.get(k, 0.0))


def unserved_type(served: list[str], probabilities: dict[str, float], chosen_by: str
                  ) -> str | None:
    """The photo's type when the router finds it most probably a kind of skin photo no served
    model was trained on (a phone photo when only the dermoscopy model is served), unless the
    person chose the model; else None. Its answer is then "not sure", and says why. The page's
    twin: ``unservedType``."""
    if chosen_by == "user" or not probabilities:
        return None
    top = max(probabilities, key=lambda k: probabilities[k])
    return top if top != "not_skin" and top not in served else None


def second_opinion_type(served: list[str], routing: dict[str, Any], line: float | None
                        ) -> str | None:
    """The other served skin model to ask as well, or None. Asked when the router (not the
    person) chose a skin model with a probability below ``line``: a phone close-up of a spot
    can look like either kind of photo, and a possibly malignant lesion missed because the
    photo went to the model of the other kind is the costliest mistake the app can make. The
    second model's malignant check can only raise the referral to urgent (``decide``); the
    conditions shown stay the chosen model's. The page's twin: ``secondOpinionType``."""
    kind, probs = routing.get("image_type"), routing.get("probabilities") or {}
    if (line is None or routing.get("chosen_by") != "router" or kind == "not_skin"
            or routing.get("unserved") or probs.get(str(kind), 0.0) >= line):
        return None
    others = [k for k in served if k != kind]
    return max(others, key=lambda k: probs.get(k, 0.0)) if others else None


def is_not_skin(routed_not_skin: bool | None, detectors: bool, model_detectors: bool) -> bool:
    """Whether a photo is answered "not skin": without a router (``routed_not_skin`` None) the
    model's own detectors decide; with one, the router decides, and the detectors too only
    when ``model_detectors`` (ServeSettings). The page's twin: ``decide``."""
    if routed_not_skin is None:
        return detectors
    return routed_not_skin or (detectors and model_detectors)


def referral_reason(verdict: str, mal_p: float | None, mal_t: float | None,
                    second_urgent: bool = False) -> str:
    """Why an analysis gets its referral: ``not_skin``; ``malignant`` (the malignant score
    reached its operating point: urgent, whatever the top condition); ``second_opinion`` (the
    model of the other kind of photo, asked as well, finds it possibly malignant: urgent too,
    see :func:`second_opinion_type`); ``uncertain`` (routine check); else ``condition`` (the
    top condition's own urgency)."""
    if verdict == "not_skin":
        return "not_skin"
    if mal_p is not None and mal_t is not None and mal_p >= mal_t:
        return "malignant"
    if second_urgent:
        return "second_opinion"
    return "uncertain" if verdict == "uncertain" else "condition"


def decide(probs: np.ndarray, not_skin: bool, uncertain_threshold: float, top_k: int,
           mal_p: float | None, mal_t: float | None, urgency: dict[str, str],
           classes: list[str], second_urgent: bool = False
           ) -> tuple[str, str | None, list[int]]:
    """The decision rules, apart from any wording: ``(verdict, referral, top-k indices)``.

    ``not_skin`` when a detector (or the router) says so; else ``ok`` when the top calibrated
    probability reaches the "not sure" threshold, else ``uncertain``. The referral is
    ``urgent`` when the malignant score reaches its operating point or a second opinion
    (``second_urgent``) finds the lesion possibly malignant, ``routine`` when uncertain, else
    the top condition's own urgency (``urgency``, default ``routine``). The
    page's on-device analysis applies the same rules (``static/ondevice/core.js``, ``decide``).
    """
    order = [int(i) for i in np.argsort(-probs, kind="stable")[:top_k]]
    if not_skin:
        return "not_skin", None, order
    verdict = "ok" if float(probs[order[0]]) >= uncertain_threshold else "uncertain"
    referral = {"malignant": "urgent", "second_opinion": "urgent", "uncertain": "routine"}.get(
        referral_reason(verdict, mal_p, mal_t, second_urgent),
        urgency.get(classes[order[0]], "routine"))
    return verdict, referral, order


def wording(verdict: str, referral: str | None, top: tuple[str, float] | None,
            mal_p: float | None, mal_t: float | None, lang: str,
            second: dict[str, Any] | None = None) -> tuple[str, str]:
    """The verdict's and the referral's sentences in ``lang``; ``top`` is the top condition's
    (name, probability); ``second`` the routing's second opinion, if one was asked."""
    second_urgent = bool(second and second.get("urgent"))
    reason = referral_reason(verdict, mal_p, mal_t, second_urgent)
    if reason == "second_opinion" and second is not None:
        # the headline and the referral name the model that found it and its own number
        other = {"model": t(f"model.{second['image_type']}", lang),
                 "type": t(f"image_type.{second['image_type']}", lang),
                 "probability": percent(second["malignant_probability"] or 0.0)}
        head = (t("verdict.ok_second", lang, name=top[0], top=percent(top[1]), **other)
                if verdict == "ok" and top is not None
                else t("verdict.uncertain_second", lang, **other))
        return head, t("referral.second_opinion", lang, **other)
    # A possibly malignant answer says so in its headline too, so the headline and the
    # referral never disagree ("not sure" above an urgent referral read as a contradiction).
    flag = "_malignant" if reason == "malignant" else ""
    malignant = percent(mal_p or 0.0)
    if verdict == "not_skin":
        verdict_text = t("verdict.not_skin", lang)
    elif verdict == "ok" and top is not None:
        verdict_text = t(f"verdict.ok{flag}", lang, name=top[0], probability=percent(top[1]),
                         malignant=malignant)
    else:
        verdict_text = t(f"verdict.uncertain{flag}", lang, malignant=malignant)
    referral_text = (t(f"referral.{referral}", lang) if reason == "condition"
                     else t(f"referral.{reason}", lang, probability=percent(mal_p or 0.0)))
    return verdict_text, referral_text


#: How far below its operating point a spot's malignant probability must fall before the
#: spot's advice returns from "see a dermatologist soon" to routine: a probability that wavers
#: around the line (42%, 41%, 42%) must not flip the advice with every photo.
ADVICE_BAND = 0.05


def spot_urgency(points: list[tuple[float | None, float | None]],
                 band: float = ADVICE_BAND) -> list[bool | None]:
    """For a spot's photos oldest first, each as ``(malignant probability, its operating
    point)``: whether the spot's advice is urgent after each photo, with hysteresis. It turns
    urgent as soon as a probability reaches its line (the photo's own answer says so too) and
    returns to routine only below ``line - band``; ``None`` where the model has no malignant
    score (the state carries over)."""
    urgent: bool | None = None
    out: list[bool | None] = []
    for p, line in points:
        if p is not None and line is not None:
            if p >= line:
                urgent = True
            elif urgent is None or p < line - band:
                urgent = False
        out.append(urgent)
    return out

