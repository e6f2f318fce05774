"""The message catalogue: every user-facing sentence in every supported language.

Messages live in ``messages.yaml`` beside this module (key -> language -> text, placeholders as
Python format fields); English is the fallback. The language of a request comes from its
``Accept-Language`` header (RFC 9110 section 12.5.4: a weighted list of language ranges), or an
explicit choice that overrides it.
"""

from __future__ import annotations

import string
from functools import cache
from importlib import resources
from typing import Any

import yaml

LANGUAGES = ("en", "ko")
DEFAULT_LANGUAGE = "en"
#: Each language's own name, for the page's language switch.
LANGUAGE_NAMES = {"en": "English", "ko": "한국어"}


@cache
def catalogue() -> dict[str, dict[str, str]]:
    """key -> language -> text (read once)."""
    text = resources.files("dermalab.core").joinpath("messages.yaml").read_text("utf-8")
    raw: dict[str, dict[str, str]] = yaml.safe_load(text)
    return raw


def negotiate(accept_language: str | None, choice: str | None = None) -> str:
    """The supported language a client asked for, else English.

    ``choice`` (an explicit ``lang``) wins when supported; otherwise the highest-weighted
    range of ``accept_language`` whose primary tag is supported (``ko-KR;q=0.9`` -> ``ko``).
    """
    if choice and choice.split("-")[0].lower() in LANGUAGES:
        return choice.split("-")[0].lower()
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        primary = tag.split("-")[0].lower()
        if primary in LANGUAGES and q > 0:
            ranked.append((-q, i, primary))
    return min(ranked)[2] if ranked else DEFAULT_LANGUAGE


def t(key: str, lang: str, **params: Any) -> str:
    """The message ``key`` in ``lang`` (English when missing), with ``params`` filled in."""
    entry = catalogue()[key]
    return (entry.get(lang) or entry[DEFAULT_LANGUAGE]).format(**params)


def messages(lang: str, prefix: str | tuple[str, ...]) -> dict[str, str]:
    """Every message whose key starts with ``prefix`` (or one of several), in ``lang``
    (unfilled, for the page)."""
    return {key: entry.get(lang) or entry[DEFAULT_LANGUAGE]
            for key, entry in catalogue().items() if key.startswith(prefix)}


def placeholders(text: str) -> set[str]:
    """The format fields of a message (``{name}`` -> ``name``)."""
    return {field for _, field, _, _ in string.Formatter().parse(text) if field}
