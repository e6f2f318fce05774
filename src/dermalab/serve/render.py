"""An analysis in words: its conditions' names and care text, and every plain-language field,
rendered in the reader's language from the facts stored (verdict, referral, conditions and
probabilities, routing), so a stored analysis reads in any language."""

from __future__ import annotations

from typing import Any

from dermalab.core.i18n import DEFAULT_LANGUAGE, t
from dermalab.serve.answer import routing_text, wording
from dermalab.serve.conditions import condition_text
from dermalab.serve.models import ServedModel


class Renderer:
    """Words for the served models' classes (their display names, the condition texts)."""

    def __init__(self, models: dict[str, ServedModel], conditions: dict[str, Any]) -> None:
        self.models = models
        self.primary = next(iter(models.values()))
        self.conditions = conditions

    def model_named(self, name: str | None) -> ServedModel:
        """The served model called ``name`` (the first one for analyses stored before models
        were named, or by a model no longer served)."""
        return next((m for m in self.models.values() if m.name == name), self.primary)

    def condition(self, cls: str, p: float, lang: str = DEFAULT_LANGUAGE,
                  model: ServedModel | None = None) -> dict[str, Any]:
        """One likely condition: its class, probability, name and care text in ``lang``."""
        names = (model or self.primary).info.display_names
        return {"class_name": cls, "probability": p,
                **condition_text(self.conditions.get(cls, {}), cls, lang, names)}

    def condition_name(self, cls: str, lang: str) -> str:
        """A class's name in ``lang``."""
        return str(self.condition(cls, 0.0, lang)["name"])

    def localize(self, result: dict[str, Any], lang: str) -> dict[str, Any]:
        """An analysis with every plain-language field in ``lang``."""
        out = dict(result)
        model = self.model_named((result.get("model") or {}).get("name"))
        conditions = [self.condition(c["class_name"], c["probability"], lang, model)
                      for c in result["conditions"]]
        verdict, mal_p, mal_t = (result["verdict"], result.get("malignant_probability"),
                                 result.get("malignant_threshold"))
        top = (conditions[0]["name"], conditions[0]["probability"]) if conditions else None
        routing = result.get("routing")
        verdict_text, referral_text = wording(verdict, result["referral"], top, mal_p, mal_t,
                                              lang, (routing or {}).get("second_opinion"))
        if routing:
            routing = {**routing, "text": routing_text(routing, lang)}
        quality = result.get("quality")
        if quality:  # what to do about the photo, in plain words ("" when it is fine)
            quality = {**quality, "text": " ".join(t(f"quality.{i}", lang)
                                                   for i in quality["issues"])}
        out.update(conditions=conditions, verdict_text=verdict_text, referral_text=referral_text,
                   disclaimer=t("disclaimer", lang), language=lang, routing=routing,
                   quality=quality)
        return out
