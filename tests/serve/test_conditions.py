"""Every class a shipped recipe can predict has care information in every language."""

from __future__ import annotations

from pathlib import Path

import pytest

from dermalab.core.config import load_config
from dermalab.core.i18n import LANGUAGES
from dermalab.data.sources import apply_class_map
from dermalab.data.tables import HAM_DX_NAMES
from dermalab.serve.answer import load_conditions

REPO = Path(__file__).resolve().parents[2]
DERMNET_FOLDERS = [  # the DermNet NZ folders configs/dermnet_clinical.yaml was written for
    "Acne vulgaris", "Acral lentiginous melanoma", "Actinic keratosis", "Amelanotic melanoma",
    "Anogenital wart", "Atopic dermatitis", "Atypical melanocytic naevus",
    "Basal cell carcinoma", "Blue nevus", "Cherry angioma", "Congenital melanocytic naevus",
    "Dermatofibroma", "Discoid eczema", "Dyshidrotic eczema (pompholyx)",
    "Erosive lichen planus", "Flexural psoriasis", "Generalised pustular psoriasis",
    "Hand dermatitis", "Herpes simplex", "Herpes zoster", "Impetigo", "Lichen planus",
    "Melanocytic naevus", "Melanoma", "Melanoma in situ", "Metastatic melanoma",
    "Molluscum contagiosum", "Nodular melanoma", "Non-albicans candida infections",
    "Ocular melanoma", "Psoriasis", "Rosacea", "Scabies", "Solar lentigo",
    "Squamous cell carcinoma", "Tinea barbae", "Tinea capitis", "Tinea corporis",
    "Tinea cruris", "Tinea faciei", "Tinea incognita", "Tinea manuum", "Tinea pedis",
    "Urticaria", "Venous eczema", "Vitiligo"]


FITZPATRICK_LABELS = [  # the Fitzpatrick17k subset's conditions (shared/data SOURCES.md)
    "squamous cell carcinoma", "basal cell carcinoma", "folliculitis", "acne vulgaris",
    "melanoma", "eczema", "acne", "mycosis fungoides", "actinic keratosis",
    "prurigo nodularis", "keloid", "kaposi sarcoma", "dermatomyositis",
    "superficial spreading melanoma ssm", "pyogenic granuloma", "malignant melanoma",
    "epidermal nevus", "dyshidrotic eczema", "dermatofibroma", "seborrheic keratosis",
    "basal cell carcinoma morpheiform"]
LABELS = {"dermnet_clinical": DERMNET_FOLDERS, "fitzpatrick17k": FITZPATRICK_LABELS,
          "ham10000": list(HAM_DX_NAMES)}


def recipe_classes(path: Path) -> set[str]:
    """The classes a recipe's model predicts: its datasets' labels through their class maps
    (each source's own, then the recipe's)."""
    cfg = load_config(str(path), [])
    sources = cfg.data.sources or [{"source": cfg.data.source, "class_map": {}}]
    out: set[str] = set()
    for src in sources:
        for label in LABELS[str(src["source"])]:
            mapped = apply_class_map(label, src.get("class_map") or {})
            if mapped is not None:
                mapped = apply_class_map(mapped, cfg.data.class_map) if cfg.data.class_map \
                    else mapped
            if mapped is not None:
                out.add(mapped)
    return out


# the training recipes on the two shipped datasets (search_*.yaml are search spaces)
RECIPES = sorted(p for p in (REPO / "configs").glob("*.yaml")
                 if not p.name.startswith("search")
                 and (load_config(str(p), []).data.source in ("ham10000", "dermnet_clinical")
                      or load_config(str(p), []).data.sources))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_class_of_a_shipped_recipe_has_care_information(recipe: Path) -> None:
    conditions = load_conditions()
    classes = recipe_classes(recipe)
    assert classes, recipe
    missing = sorted(c for c in classes if c not in conditions)
    assert not missing, f"{recipe.name}: no entry in serve/conditions.yaml for {missing}"
    for c in classes:
        entry = conditions[c]
        assert entry["urgency"] in ("urgent", "routine", "self-care"), c
        for lang in LANGUAGES:
            texts = entry if lang == "en" else entry.get(lang) or {}
            for key in ("name", "description", "care", "see_doctor"):
                assert str(texts.get(key, "")).strip(), f"{c}: no {lang} {key}"


def test_the_two_source_recipe_adds_keloid_and_rare_cancers_and_refers_them() -> None:
    recipe = REPO / "configs" / "clinical_two_source.yaml"
    classes = recipe_classes(recipe)
    assert classes == recipe_classes(REPO / "configs" / "dermnet_clinical.yaml") | {
        "keloid", "rare_skin_cancer"}
    cfg = load_config(str(recipe), [])
    conditions = load_conditions()
    assert set(cfg.eval.malignant_classes) <= classes
    assert all(conditions[c]["urgency"] == "urgent" for c in cfg.eval.malignant_classes)
    fitz = next(s for s in cfg.data.sources if s["name"] == "fitzpatrick17k")
    # every Fitzpatrick17k condition is placed, or left out on purpose
    assert set(fitz["class_map"]) == set(FITZPATRICK_LABELS)


def test_the_clinical_recipe_maps_folders_to_its_eleven_classes_and_its_urgent_ones() -> None:
    recipe = REPO / "configs" / "dermnet_clinical.yaml"
    classes = recipe_classes(recipe)
    assert len(classes) == 11 and "melanoma" in classes and "Ocular melanoma" not in classes
    cfg = load_config(str(recipe), [])
    conditions = load_conditions()
    # the malignant classes exist, and each is an urgent referral
    assert set(cfg.eval.malignant_classes) <= classes
    assert all(conditions[c]["urgency"] == "urgent" for c in cfg.eval.malignant_classes)
    # a sample of the mapping
    cm = cfg.data.class_map
    assert apply_class_map("Tinea incognita", cm) == "fungal"
    assert apply_class_map("Nodular melanoma", cm) == "melanoma"
    assert apply_class_map("Ocular melanoma", cm) is None
    assert apply_class_map("Hand dermatitis", cm) == "eczema"
