"""The answer's headline and its referral never disagree (issue 51, defect 1): a possibly
malignant answer says so in the headline too, in every language."""

from __future__ import annotations

import numpy as np
import pytest

from dermalab.core.i18n import LANGUAGES
from dermalab.serve.answer import decide, wording

CLASSES = ["mel", "nv", "bkl"]
URGENCY = {"mel": "urgent", "nv": "self-care", "bkl": "routine"}


@pytest.mark.parametrize("lang", LANGUAGES)
def test_not_sure_but_possibly_malignant_is_one_message(lang: str) -> None:
    probs = np.array([0.42, 0.40, 0.18])  # no clear top class, melanoma over its line
    verdict, referral, _ = decide(probs, False, 0.55, 3, 0.42, 0.30, URGENCY, CLASSES)
    assert (verdict, referral) == ("uncertain", "urgent")
    head, box = wording(verdict, referral, ("Melanoma", 0.42), 0.42, 0.30, lang)
    plain_unsure, _ = wording("uncertain", "routine", ("Melanoma", 0.42), 0.42, None, lang)
    assert head != plain_unsure  # not the bare "not sure" above an urgent referral
    assert "42%" in head and "42%" in box


def test_a_confident_benign_answer_over_the_malignant_line_names_both() -> None:
    probs = np.array([0.35, 0.60, 0.05])
    verdict, referral, _ = decide(probs, False, 0.55, 3, 0.35, 0.30, URGENCY, CLASSES)
    assert (verdict, referral) == ("ok", "urgent")
    head, box = wording(verdict, referral, ("Melanocytic naevus", 0.60), 0.35, 0.30, "en")
    assert head.startswith("Most likely: Melanocytic naevus (60%), but")
    assert "possibly malignant" in head and "possibly malignant" in box
    # under the line the headline is the plain one and the referral the condition's own
    head, _ = wording("ok", "self-care", ("Melanocytic naevus", 0.60), 0.25, 0.30, "en")
    assert head == "Most likely: Melanocytic naevus (60%)."
