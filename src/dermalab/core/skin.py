"""Skin tone: the Fitzpatrick skin types I-VI in the three groups skin-tone audits report
(I-II, III-IV, V-VI; Groh et al., CVPR-W 2021), shared by the data layer (``data inspect``)
and the subgroup metrics."""

from __future__ import annotations

from typing import Any

SKIN_TYPE_GROUPS = {1: "I-II", 2: "I-II", 3: "III-IV", 4: "III-IV", 5: "V-VI", 6: "V-VI"}
_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "v": 5, "vi": 6}


def skin_type_group(value: Any) -> str:
    """A Fitzpatrick type (1-6, or I-VI) as its group ``I-II`` / ``III-IV`` / ``V-VI``;
    ``unknown`` for anything else (Fitzpatrick17k writes -1 for unknown)."""
    try:
        t = int(float(value))
    except (TypeError, ValueError):
        t = _ROMAN.get(str(value).strip().lower(), 0)
    return SKIN_TYPE_GROUPS.get(t, "unknown")
