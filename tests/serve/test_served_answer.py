"""The numbers we report are the answers people get: on a real lesion-grouped test split,
``dermalab predict``, ``dermalab evaluate`` and the web API give, image for image, the classes
and probabilities the run's evaluation measured (``predictions_test.csv``, metrics.json)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dermalab.serve.app import create_app
from dermalab.serve.settings import ServeSettings
from tests.conftest import HAM_DIR


def _evaluated(run: Path) -> dict[str, dict[str, str]]:
    """The evaluation's served answer per test image: predicted class and probabilities."""
    with open(run / "predictions_test.csv") as f:
        return {r["sample_id"]: r for r in csv.DictReader(f)}


def test_predict_gives_the_evaluated_answer_for_every_test_photo(
        skin_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dermalab.cli import main

    evaluated = _evaluated(skin_run)
    images = [str(HAM_DIR / "images" / f"{i}.jpg") for i in sorted(evaluated)]
    assert len(images) >= 20
    assert main(["predict", str(skin_run), *images, "--json", "--top-k", "1"]) == 0
    answers = json.loads(capsys.readouterr().out)
    for img, a in zip(images, answers, strict=True):
        row = evaluated[Path(img).stem]
        assert a["top"][0]["class"] == row["pred"], img
        assert a["top"][0]["probability"] == pytest.approx(float(row[f"p_{row['pred']}"]),
                                                           abs=1e-5)


def test_evaluate_reports_the_metrics_of_those_answers(skin_run: Path) -> None:
    from sklearn.metrics import balanced_accuracy_score

    from dermalab.evaluate.evaluate import evaluate_run

    evaluated = _evaluated(skin_run)
    ids = sorted(evaluated)
    expected = balanced_accuracy_score([evaluated[i]["label"] for i in ids],
                                       [evaluated[i]["pred"] for i in ids])
    res = evaluate_run(skin_run, split="test", bootstrap=50)
    m = json.loads((skin_run / "metrics.json").read_text())
    assert res["balanced_accuracy"] == pytest.approx(expected)
    assert m["balanced_accuracy"] == pytest.approx(expected)
    assert res["accuracy"] == pytest.approx(m["accuracy"])
    lo, hi = res["intervals"]["balanced_accuracy"]
    assert lo <= expected <= hi


def test_the_api_gives_the_evaluated_answer(skin_run: Path, tmp_path: Path) -> None:
    evaluated = _evaluated(skin_run)
    settings = ServeSettings(run_dir=str(skin_run), database_url=f"sqlite:///{tmp_path}/h.db",
                             image_store=str(tmp_path / "uploads"), open=True)
    answered = 0
    with TestClient(create_app(settings)) as client:
        for sid in sorted(evaluated):
            path = HAM_DIR / "images" / f"{sid}.jpg"
            r = client.post("/v1/analyses", files={"file": (path.name, path.read_bytes())},
                            headers={"X-Requested-With": "dermalab"})
            assert r.status_code == 201, r.text
            body = r.json()
            if body["verdict"] == "not_skin":  # a detector's verdict, not a class
                continue
            answered += 1
            top = body["conditions"][0]
            row = evaluated[sid]
            assert top["class_name"] == row["pred"], sid
            assert top["probability"] == pytest.approx(float(row[f"p_{row['pred']}"]),
                                                       abs=1e-5)
            # "not sure" is the stored line applied to that same probability
            assert (body["verdict"] == "uncertain") == (top["probability"]
                                                         < body["uncertain_threshold"])
    assert answered >= len(evaluated) * 0.8
