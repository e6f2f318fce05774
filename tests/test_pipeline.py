"""The end-of-run summary and the CLI's evaluate line keep every metric when ROC-AUC is
undefined (a class missing from the test split)."""

from __future__ import annotations

from typing import Any

import pytest

from dermalab import cli
from dermalab.pipeline import summary

CLASSES = ["a", "b"]


def _results(auc: float | None) -> dict[str, Any]:
    per = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 3, "roc_auc": None}
    return {"n": 6, "best_epoch": 2, "epochs_run": 3, "balanced_accuracy": 0.6123,
            "accuracy": 0.7, "macro_f1": 0.55, "roc_auc_macro": auc,
            "per_class": {c: per for c in CLASSES}}


@pytest.mark.parametrize("auc", [None, 0.91])
def test_summary_keeps_the_metrics_lines(auc: float | None) -> None:
    text = summary({**_results(auc), "intervals": {"balanced_accuracy": [0.5, 0.7]}}, CLASSES)
    lines = text.splitlines()
    i = next(k for k, x in enumerate(lines) if "balanced accuracy" in x)
    assert "0.6123 [0.500, 0.700]" in lines[i] and "accuracy 0.7000" in lines[i]
    assert "macro-F1 0.5500" in lines[i + 1]
    assert ("undefined" in lines[i + 1]) == (auc is None)


@pytest.mark.parametrize("auc", [None, 0.91])
def test_cli_evaluate_keeps_the_metrics_lines(auc: float | None, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import dermalab.evaluate.evaluate as ev

    res = {**_results(auc), "split": "test", "data": "somewhere", "temperature": 1.2,
           "tau": 1.0, "tta": False, "ece_raw": 0.1, "ece": 0.05, "nll_raw": 0.9, "nll": 0.8}
    monkeypatch.setattr(ev, "evaluate_run", lambda *a, **k: res)
    assert cli.main(["evaluate", "RUN"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "the served answer" in lines[0]
    assert "balanced accuracy 0.6123" in lines[1] and "accuracy 0.7000" in lines[1]
    assert "macro-F1 0.5500" in lines[2]
    assert ("undefined" in lines[2]) == (auc is None)
