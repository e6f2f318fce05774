"""The command line: JSON contracts, exit codes, and the real HAM10000 acceptance checks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dermalab.cli import main


def _inspect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code = main(["data", "inspect", *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_inspect_folder_json(folder_dataset: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    code, rep = _inspect(capsys, str(folder_dataset), "--split-out", str(tmp_path / "s"))
    assert code == 0
    assert rep["n_images"] == 36 and rep["classes"] == {"akiec": 12, "bcc": 12, "nv": 12}
    assert rep["group_overlap"] == 0 and rep["duplicate_overlap"] == 0 and rep["unreadable"] == []
    assert sum(sum(v.values()) for v in rep["splits"].values()) == 36
    assert (tmp_path / "s" / "class_counts.png").stat().st_size > 1000
    with open(tmp_path / "s" / "splits.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) >= {"sample_id", "label", "group", "split"} and len(rows) == 36


def test_inspect_reports_every_bad_file_and_fails(folder_dataset: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (folder_dataset / "nv" / "zero.jpg").write_bytes(b"")
    (folder_dataset / "bcc" / "text.png").write_text("hello")
    code, rep = _inspect(capsys, str(folder_dataset))
    assert code == 1
    errors = {Path(u["path"]).name: u["error"] for u in rep["unreadable"]}
    assert errors == {"zero.jpg": "empty file (0 bytes)",
                      "text.png": "not an image (unrecognised file format)"}


def test_inspect_reports_a_leaky_external_split(ham_dataset: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with open(ham_dataset) as f:
        ids = [r["image_id"] for r in csv.DictReader(f)]
    ext = tmp_path / "by_image.csv"
    ext.write_text("image_id,split\n" + "\n".join(
        f"{i},{['train', 'test'][n % 2]}" for n, i in enumerate(ids)))
    code, rep = _inspect(capsys, str(ham_dataset), "--set", f"data.split_file={ext}")
    assert code == 1 and rep["group_overlap"] == 24
    assert rep["group_overlap_pairs"]["train-test"] == 24


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "inspect", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset not found") and "Traceback" not in err
    assert main(["train", "--data", str(tmp_path), "--set", "train.epoch=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    # an export format that does not exist is named with the ones that do, before any work
    assert main(["export", str(tmp_path), "--format", "tflite"]) == 2
    assert capsys.readouterr().err == "error: unknown export format 'tflite'; known: onnx\n"
    assert main(["segment", "export", str(tmp_path), "--format", "coreml"]) == 2
    assert "unknown segmenter export format 'coreml'; known: onnx" in capsys.readouterr().err


@pytest.mark.realdata
def test_real_ham10000_inspect(ham_real: Path, tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "dermalab", "data", "inspect", str(ham_real),
                          "--json", "--split-out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["n_images"] == 10015 and rep["n_groups"] == 7470
    assert rep["classes"] == {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113,
                              "nv": 6705, "vasc": 142}
    assert rep["group_overlap"] == 0 and rep["duplicate_overlap"] == 0 and rep["unreadable"] == []
    with open(tmp_path / "splits.csv") as f:
        rows = list(csv.DictReader(f))
    lesions: dict[str, set[str]] = {}
    for r in rows:
        lesions.setdefault(r["group"], set()).add(r["split"])
    assert len(rows) == 10015 and all(len(v) == 1 for v in lesions.values())


@pytest.mark.realdata
@pytest.mark.slow
def test_real_ham10000_smoke_train_and_evaluate(ham_real: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "dermalab", "train", "-c", "configs/smoke.yaml", "--data",
         str(ham_real), "--out", str(run), "--no-progress", "--set", "train.max_batches=8",
         # The web service's detectors are fitted on real HAM10000 by the serve tests'
         # skin_run; here they would cost 10 of this test's 56 s.
         "train.eval_batch_size=128", "eval.serving=false"],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["n"] > 900 and sum(m["split"]["counts"]["test"].values()) == m["n"]
    assert m["split"]["group_overlap"] == 0
    ev = subprocess.run([sys.executable, "-m", "dermalab", "evaluate", str(run), "--json"],
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["balanced_accuracy"] == pytest.approx(m["balanced_accuracy"])
