"""How a condition is worded in one language: shared by the server's answers and the
on-device bundle, so both say the same."""

from __future__ import annotations

from typing import Any

from dermalab.core.i18n import t


def condition_text(entry: dict[str, Any], cls: str, lang: str,
                   display_names: dict[str, str]) -> dict[str, str]:
    """The plain-language fields of class ``cls`` in ``lang``: its care-information
    ``entry``'s texts in that language over the English ones, the model's display name when
    the entry has no name, the catalogue's "no information" lines for missing texts, and the
    entry's referral urgency (``routine`` by default)."""
    local = {**entry, **(entry.get(lang) or {})}
    return {"name": local.get("name") or display_names.get(cls, cls),
            "urgency": entry.get("urgency", "routine"),
            "description": local.get("description") or t("condition.no_description", lang),
            "care": local.get("care") or t("condition.no_care", lang),
            "see_doctor": local.get("see_doctor") or t("condition.no_see_doctor", lang)}
