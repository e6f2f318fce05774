"""The docs as a newcomer follows them: the README is short and its links resolve, and the
tested blocks of ``docs/getting-started.md`` (marked ``<!-- docs-test: NAME -->``) run as
written, on a tiny real dataset (HAM10000 photos in a folder per class).

The one liberty taken: ``dermalab train`` gets a tiny size (1 epoch at 48 px, fewer bootstrap
resamples) through a ``.venv/bin/dermalab`` wrapper, so the block runs in a minute; every other
word of each block runs as printed. ``mkdocs build --strict`` itself is part of the test
command (README), so a broken link or API reference fails CI there.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import HAM_DIR, REPO
from tests.s3server import free_ports

DOC = REPO / "docs" / "getting-started.md"
TINY = ["eval.bootstrap=20", "data.image_size=48", "train.epochs=1", "train.batch_size=8",
        "train.patience=0", "eval.gallery=0", "data.split_ratios=[0.5,0.25,0.25]"]
XRW = {"X-Requested-With": "dermalab"}


def blocks(text: str) -> dict[str, str]:
    """The tested shell blocks of a page: name -> script."""
    found = re.findall(r"<!-- docs-test: ([\w-]+) -->\n```bash\n(.*?)```", text, re.S)
    return dict(found)


def commands(script: str) -> set[str]:
    """A script's commands, continuation lines joined, comments and spacing removed."""
    joined = script.replace("\\\n", " ")
    out = set()
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.add(" ".join(line.split()))
    return out


def test_readme_is_short_and_its_links_resolve() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith("http"):
            assert (REPO / target).exists(), f"README links to a missing {target}"


def test_the_readme_test_command_is_what_ci_runs() -> None:
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert "mkdocs build --strict" in ci
    assert f"```bash\n{ci}\n```" in (REPO / "README.md").read_text()


def test_readme_quick_starts_are_the_tested_commands() -> None:
    """Every command of the README's quick starts is one the docs test runs."""
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quick starts", 1)[1].split("\n## ", 1)[0]
    readme_cmds = set().union(*(commands(b) for b in re.findall(r"```bash\n(.*?)```", quick,
                                                                re.S)))
    tested = set().union(*(commands(b) for b in blocks(DOC.read_text()).values()))
    assert readme_cmds and readme_cmds <= tested, readme_cmds - tested


def _workdir(root: Path) -> Path:
    """A newcomer's folder: my_photos/<class>/ with real HAM10000 photos of distinct lesions,
    a photo.jpg to analyse, the repository's examples/, and .venv/bin/dermalab."""
    if not (HAM_DIR / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"real HAM10000 data not found at {HAM_DIR} (set DERMALAB_SHARED_DATA)")
    picked: dict[str, list[str]] = {"nv": [], "mel": [], "bkl": []}
    lesions: set[str] = set()
    with open(HAM_DIR / "HAM10000_metadata.csv") as f:
        for row in csv.DictReader(f):
            dx, lesion = row["dx"], row["lesion_id"]
            if dx in picked and len(picked[dx]) < 12 and lesion not in lesions:
                lesions.add(lesion)
                picked[dx].append(row["image_id"])
    for dx, ids in picked.items():
        (root / "my_photos" / dx).mkdir(parents=True)
        for image_id in ids:
            shutil.copy(HAM_DIR / "images" / f"{image_id}.jpg", root / "my_photos" / dx)
    shutil.copy(next((root / "my_photos" / "mel").iterdir()), root / "photo.jpg")
    (root / "examples").symlink_to(REPO / "examples")
    wrapper = root / ".venv" / "bin" / "dermalab"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(
        "#!/bin/bash\n"
        f'if [ "$1" = train ]; then exec {sys.executable} -m dermalab "$@" --no-progress '
        f"--set {' '.join(TINY)}; fi\n"
        f'exec {sys.executable} -m dermalab "$@"\n')
    wrapper.chmod(0o755)
    return root


def _env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}


def _run(script: str, cwd: Path) -> str:
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=_env(),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{script}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def own_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The "train on your own folder" block, run as printed."""
    root = _workdir(tmp_path_factory.mktemp("newcomer"))
    return root, _run(blocks(DOC.read_text())["own-folder"], root)


@pytest.mark.slow
def test_train_on_your_own_folder(own_folder: tuple[Path, str]) -> None:
    root, out = own_folder
    run = root / "runs" / "my_model"
    for name in ("report.html", "metrics.json", "decision.json", "splits.csv"):
        assert (run / name).is_file(), name
    assert "balanced accuracy" in out.lower()  # evaluate printed the served answer
    assert list((run / "explain").glob("*.png"))  # explain wrote its overlays


@pytest.mark.slow
def test_analyse_a_photo(own_folder: tuple[Path, str]) -> None:
    root, _ = own_folder
    out = _run(blocks(DOC.read_text())["predict"], root)
    assert "photo.jpg" in out and "%" in out
    assert (root / "runs" / "my_model" / "export" / "model.onnx").is_file()


@pytest.mark.slow
def test_host_the_page_for_a_clinic(own_folder: tuple[Path, str]) -> None:
    root, _ = own_folder
    port = free_ports(1)[0]
    script = blocks(DOC.read_text())["host"].replace("--port 8000", f"--port {port}")
    assert f"--port {port}" in script
    log = root / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=root,
                                env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url, host = f"http://127.0.0.1:{port}", {"Host": "skin.example.org"}
    try:
        deadline = time.time() + 600
        while True:
            try:
                if httpx.get(url + "/healthz", headers=host, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        assert (root / "clinics.yaml").is_file()
        assert (root / "runs" / "my_model" / "export" / "model.int8.onnx").is_file()
        health = httpx.get(url + "/healthz", headers=host).json()
        assert health["mode"] == "accounts"
        assert httpx.get(url + "/healthz", headers={"Host": "evil.example"}).status_code == 400
        page = httpx.get(url + "/", headers=host)
        assert page.status_code == 200 and "strict-transport-security" in page.headers
        anon = httpx.post(url + "/v1/auth/anonymous", headers={**host, **XRW})
        assert "__Host-" in anon.headers["set-cookie"] and "secure" in \
            anon.headers["set-cookie"].lower()
        auth = {**host, "Authorization": f"Bearer {anon.json()['token']}"}
        photo = (root / "photo.jpg").read_bytes()
        r = httpx.post(url + "/v1/analyses", headers=auth,
                       files={"file": ("photo.jpg", photo, "image/jpeg")}, timeout=60)
        assert r.status_code == 201, r.text
        assert r.json()["verdict"] in ("ok", "uncertain", "not_skin")
        clinics = httpx.get(url + "/v1/clinics", params={"city": "Seoul"}, headers=host)
        assert clinics.status_code == 200 and clinics.json()["items"], clinics.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_where_to_change_what_names_real_files_and_at_most_three_each() -> None:
    """The README's table of common changes (issue 53): each row's source files exist, and a
    change touches at most three of them."""
    text = (REPO / "README.md").read_text()
    table = text.split("| to add | source files it touches |", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")]
    assert {r.split("|")[1].strip() for r in rows} >= {
        "a metric", "a loss", "a dataset format", "an endpoint", "an export format"}
    path = r"`([a-z_/]+(?:\.py|/))`"
    for row in rows:
        cell = row.split("|")[2]
        for f in re.findall(path, cell):
            assert (REPO / "src" / "dermalab" / f).exists(), f"{row}: no src/dermalab/{f}"
        # "`a.py` or `b.py`": one file of the two is touched
        touched = re.findall(path, re.sub(path + r" or " + path, r"`\1`", cell))
        assert 1 <= len(set(touched)) <= 3, row
