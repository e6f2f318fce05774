"""The metadata model's encoding, evidence and input checks (fitting: tests/evaluate)."""

from __future__ import annotations

import numpy as np
import pytest

from dermalab.core.errors import DermalabError
from dermalab.core.metadata import MetadataModel


def model(coef: np.ndarray | None = None, prior: tuple[float, ...] = (0.2, 0.3, 0.5)
          ) -> MetadataModel:
    m = MetadataModel(fields=["age", "sex", "localization"], sexes=["female", "male"],
                      sites=["back", "face"], coef=[], intercept=[],
                      log_prior=np.log(prior).tolist())
    d = len(m.feature_names())
    m.coef = (np.zeros((3, d)) if coef is None else coef).tolist()
    m.intercept = np.log(prior).tolist()
    return m


def test_encoding_puts_each_field_in_its_columns() -> None:
    m = model()
    names = m.feature_names()
    x = m.encode([{"age": 70.0, "age_missing": False, "sex": "Male", "localization": "face"},
                  {"age": 55.0, "age_missing": True, "sex": "unknown", "localization": "scalp"},
                  {"age": 30.0}])
    on = [{names[j] for j in np.flatnonzero(row) if names[j] not in ("age", "age^2")}
          for row in x]
    assert on[0] == {"age 60-74", "sex=male", "site=face"}
    # An imputed age, an "unknown" sex and a site the model never saw all count as missing.
    assert on[1] == {"age missing", "sex missing", "site missing"}
    assert on[2] == {"age 30-44", "sex missing", "site missing"}  # 30 opens the 30-44 band
    assert x[0, names.index("age")] == pytest.approx(1.0)  # (70 - 50) / 20
    assert x[0, names.index("age^2")] == pytest.approx(1.0)
    assert x[1, names.index("age")] == 0.0


def test_fields_left_out_have_no_columns() -> None:
    m = model()
    m.fields = ["sex"]
    assert m.feature_names() == ["sex=female", "sex=male", "sex missing"]
    assert m.encode([{"sex": "female", "age": 40}]).tolist() == [[1.0, 0.0, 0.0]]


def test_uninformative_metadata_adds_no_evidence() -> None:
    # Limiting case: a regression that only knows the prior gives r = log p(y|m) - log pi = 0,
    # so the fused logits are the image's own.
    m = model()
    rows = [{"age": 80, "sex": "male", "localization": "back"}, {}]
    assert np.abs(m.log_ratio(rows)).max() < 1e-12
    z = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, 3.0]])
    assert np.allclose(m.fuse(z, rows), z)


def test_evidence_is_the_regressions_log_posterior_minus_log_prior() -> None:
    rng = np.random.default_rng(0)
    d = len(model().feature_names())
    m = model(coef=rng.normal(size=(3, d)))
    rows = [{"age": 64, "sex": "female", "localization": "face"}]
    z = m.encode(rows) @ np.asarray(m.coef).T + np.asarray(m.intercept)
    log_post = z - np.log(np.exp(z).sum())
    assert np.allclose(m.log_ratio(rows), log_post - np.asarray(m.log_prior))
    m.weight = 0.5
    assert np.allclose(m.fuse(np.zeros((1, 3)), rows), 0.5 * (log_post - m.log_prior))


@pytest.mark.parametrize(("given", "problem"), [
    ({"age": "forty"}, "age 'forty' is not a number of years"),
    ({"age": 140}, "age 140 is outside 0-120 years"),
    ({"age": -1}, "age -1 is outside 0-120 years"),
    ({"sex": "robot"}, "sex 'robot' is not one this model knows: ['female', 'male']"),
    ({"site": "elbow"}, "body site 'elbow' is not one this model knows: ['back', 'face']"),
])
def test_bad_user_input_is_named(given: dict, problem: str) -> None:
    with pytest.raises(DermalabError) as exc:
        model().parse(**given)
    assert str(exc.value) == problem


def test_user_input_is_normalised_and_optional() -> None:
    m = model()
    assert m.parse() == {}
    assert m.parse(age="", sex="unknown", site=None) == {}
    row = m.parse(age="61", sex=" Female ", site="FACE")
    assert row == {"age": 61.0, "sex": "female", "localization": "face"}
    assert m.given(row) == ["age", "sex", "localization"]
    assert m.given({}) == []


def test_json_round_trip() -> None:
    m = model(coef=np.ones((3, len(model().feature_names()))))
    m.weight = 0.7
    back = MetadataModel.from_json(m.to_json())
    assert back == m
    rows = [{"age": 33, "sex": "male", "localization": "back"}]
    assert np.allclose(back.log_ratio(rows), m.log_ratio(rows))
