"""Config: defaults <- YAML <- overrides, validated with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dermalab.core.config import ExperimentConfig, load_config, parse_override, save_config
from dermalab.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_overrides_parse_yaml_values(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.epochs=1", "data.image_size=64", "optim.lr=3e-4",
                             "model.pretrained=false", "data.split_ratios=[0.7,0.15,0.15]",
                             "tracking.uri=sqlite:///x.db", "data.class_map={a: b, c: null}"])
    assert cfg.train.epochs == 1 and cfg.data.image_size == 64 and cfg.optim.lr == 3e-4
    assert cfg.model.pretrained is False and cfg.data.split_ratios == [0.7, 0.15, 0.15]
    assert cfg.tracking.uri == "sqlite:///x.db" and cfg.data.class_map == {"a": "b", "c": None}


def test_documented_override_keys_exist() -> None:
    keys = ["data.image_size=32", "data.format=folder", "train.epochs=2", "train.batch_size=8",
            "train.seed=3", "model.backbone=resnet18", "model.pretrained=true", "loss.name=focal",
            "optim.name=sgd", "optim.lr=0.1", "sched.name=step", "tracking.uri=file:///tmp/m"]
    cfg = load_config(None, keys)
    assert cfg.sched.name == "step" and cfg.loss.name == "focal"


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown config key"),
    ("train.epochs=three", "must be an integer"),
    ("loss.name=hinge", "must be one of"),
    ("loss.tau=-0.5", r"'loss.tau' must be >= 0, got -0.5"),
    ("loss.gamma=-1", r"'loss.gamma' must be >= 0"),
    ("model.pretrained=maybe", "must be true or false"),
    ("model.members=0", r"'model.members' must be >= 1, got 0"),
    ("data.near_duplicates=-2", r"'data.near_duplicates' must be >= -1"),
    ("eval.metadata=[age, age]", r"'eval.metadata' takes distinct values of \('age', 'sex'"),
    ("eval.metadata=[height]", r"'eval.metadata' must be one of \('age', 'sex'"),
    ("data.sampler=balanced", r"'data.sampler' must be one of \('none', 'oversample', 'sqrt'\)"),
    ("epochs", "not of the form key=value"),
])
def test_bad_overrides(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_yaml_round_trip_and_recipes(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "ham10000_default.yaml", ["train.epochs=3"])
    out = tmp_path / "config.yaml"
    save_config(cfg, out)
    assert load_config(out) == cfg
    for recipe in sorted((REPO / "configs").glob("*.yaml")):
        if recipe.name.startswith("search_"):
            from dermalab.experiments.tune import load_space

            assert load_space(recipe, cfg).params  # shipped search spaces are valid
        else:
            assert isinstance(load_config(recipe), ExperimentConfig)


def test_missing_or_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not sections\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_parse_override_keeps_strings() -> None:
    assert parse_override("data.source=../shared/data") == ("data.source", "../shared/data")


def test_a_yaml_boolean_key_is_named_not_crashed_on(tmp_path: Path) -> None:
    """``on:`` unquoted is YAML's True: a one-line error saying so, not a TypeError."""
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  augment:\n    on: batch\n")
    with pytest.raises(ConfigError, match=r"data\.augment\.True.*on/off/yes/no.*quote"):
        load_config(f)


def test_choices_and_bounds_are_read_from_the_field_types() -> None:
    """What the docs' configuration reference lists is what the reader enforces."""
    import typing

    from dermalab.core.config import LossConfig
    from dermalab.core.schema import choices, lower_bound

    hints = typing.get_type_hints(LossConfig, include_extras=True)
    assert choices(hints["name"]) == ("ce", "weighted_ce", "focal", "cb", "la")
    assert lower_bound(hints["gamma"]) == 0.0 and lower_bound(hints["beta"]) is None
    for word in choices(hints["name"]) or ():
        assert load_config(None, [f"loss.name={word}"]).loss.name == word
