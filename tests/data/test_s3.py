"""push/pull and s3:// datasets against a real S3-compatible server (SeaweedFS on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from dermalab.data.s3 import MANIFEST, TMP_SUFFIX, S3Error, digest_file, pull, push
from tests.conftest import S3Server, write_folder_dataset, write_photo_dataset


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = write_folder_dataset(tmp_path / "ds", per_class=5)
    (root / "nv" / "deeper").mkdir()
    (root / "nv" / "deeper" / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024))  # multipart
    return root


def test_round_trip_is_byte_exact_and_verified(s3_env: str, dataset: Path, tmp_path: Path
                                               ) -> None:
    uri = f"s3://{s3_env}/datasets/ds"
    res = push(dataset, uri, progress=False)
    assert res.files == 16 and res.transferred == 16 and res.verified == 16
    objs = boto3.client("s3").list_objects_v2(Bucket=s3_env)["Contents"]
    assert any(o["Key"].endswith(MANIFEST) for o in objs)
    big = next(o for o in objs if o["Key"].endswith("big.bin"))
    assert big["ETag"].strip('"').endswith("-2")  # really multipart
    assert big["ETag"].strip('"') == digest_file(dataset / "nv/deeper/big.bin").etag
    out = tmp_path / "copy"
    got = pull(uri, out, progress=False)
    assert got.transferred == 16 and got.verified == 16
    assert _tree(out) == _tree(dataset)


def test_second_push_and_pull_skip_unchanged(s3_env: str, dataset: Path, tmp_path: Path) -> None:
    uri = f"s3://{s3_env}/ds"
    push(dataset, uri, progress=False)
    again = push(dataset, uri, progress=False)
    assert again.transferred == 0 and again.skipped == 16
    (dataset / "bcc" / "img_000.jpg").write_bytes(b"changed bytes")
    third = push(dataset, uri, progress=False)
    assert third.transferred == 1
    out = tmp_path / "copy"
    pull(uri, out, progress=False)
    assert pull(uri, out, progress=False).transferred == 0
    (out / "nv" / "img_001.jpg").write_bytes(b"local damage")  # same name, wrong content
    assert pull(uri, out, progress=False).transferred == 1
    assert _tree(out) == _tree(dataset)


def test_interrupted_push_resumes(s3_env: str, tmp_path: Path, s3_server: S3Server) -> None:
    src = tmp_path / "many"
    for i in range(120):
        (src / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / f"c{i % 3}" / f"f{i:03d}.bin").write_bytes(os.urandom(200_000))
    uri = f"s3://{s3_env}/many"
    proc = subprocess.Popen([sys.executable, "-m", "dermalab", "data", "push", str(src), uri,
                             "--workers", "1", "--json"], env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = boto3.client("s3")
    deadline = time.time() + 120
    n = 0
    while time.time() < deadline and proc.poll() is None:
        n = client.list_objects_v2(Bucket=s3_env).get("KeyCount", 0)
        if n >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "push finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    landed = client.list_objects_v2(Bucket=s3_env).get("KeyCount", 0)
    assert 10 <= landed < 120
    assert not any(o["Key"].endswith(MANIFEST)
                   for o in client.list_objects_v2(Bucket=s3_env).get("Contents", []))
    res = push(src, uri, progress=False)
    assert res.skipped >= landed - 1 and res.transferred <= 120 - landed + 1
    assert res.transferred + res.skipped == 120 and res.verified == 120


def test_interrupted_pull_leaves_no_complete_looking_partial(s3_env: str, dataset: Path,
                                                              tmp_path: Path) -> None:
    uri = f"s3://{s3_env}/ds"
    push(dataset, uri, progress=False)
    out = tmp_path / "copy"
    pull(uri, out, progress=False)
    # Simulate what a kill leaves: one file missing, one half-written temporary.
    (out / "akiec" / "img_002.jpg").unlink()
    (out / "nv" / "img_003.jpg").rename(out / "nv" / ("img_003.jpg" + TMP_SUFFIX))
    (out / "nv" / ("img_003.jpg" + TMP_SUFFIX)).write_bytes(b"half")
    res = pull(uri, out, progress=False)
    assert res.transferred == 2 and res.skipped == 14
    assert _tree(out) == _tree(dataset)


def test_wrong_secret_is_rejected_clearly(s3_env: str, dataset: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(S3Error, match="rejected the credentials") as info:
        push(dataset, f"s3://{s3_env}/x", progress=False)
    assert "not-the-secret" not in str(info.value)


def test_missing_bucket_prefix_and_unreachable(s3_env: str, dataset: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(S3Error, match="bucket does not exist"):
        push(dataset, "s3://no-such-bucket-here/x", progress=False)
    with pytest.raises(S3Error, match="no objects under this prefix"):
        pull(f"s3://{s3_env}/nothing/here", tmp_path / "o", progress=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(S3Error, match="cannot reach the S3 endpoint"):
        pull(f"s3://{s3_env}/x", tmp_path / "o", progress=False)


def test_file_changed_on_the_server_mid_transfer(s3_env: str, dataset: Path, tmp_path: Path
                                                 ) -> None:
    uri = f"s3://{s3_env}/ds"
    push(dataset, uri, progress=False)
    client = boto3.client("s3")
    writer = boto3.client("s3")
    changed = []

    def overwrite_first(**kwargs: object) -> None:
        if not changed:  # between the listing and the first download, the object changes
            writer.put_object(Bucket=s3_env, Key="ds/akiec/img_000.jpg", Body=b"new content")
            changed.append(True)

    client.meta.events.register("before-call.s3.GetObject", overwrite_first)
    out = tmp_path / "copy"
    with pytest.raises(S3Error, match="changed on the server during the transfer"):
        pull(uri, out, progress=False, client=client, workers=1)
    assert not (out / "akiec" / "img_000.jpg").exists() or \
        (out / "akiec" / "img_000.jpg").read_bytes() == b"new content"
    assert not list(out.rglob(f"*{TMP_SUFFIX}"))


def test_full_local_disk_is_reported(s3_env: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    push(src, f"s3://{s3_env}/big", progress=False)
    small = tmp_path / "small_disk"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with pytest.raises(Exception, match="local disk is full"):
            pull(f"s3://{s3_env}/big", small, progress=False)
        assert not (small / "a.bin").exists()
        assert not list(small.rglob(f"*{TMP_SUFFIX}"))
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_cli_push_pull_json(s3_env: str, dataset: Path, tmp_path: Path) -> None:
    uri = f"s3://{s3_env}/cli"
    run = [sys.executable, "-m", "dermalab", "data"]
    p1 = subprocess.run([*run, "push", str(dataset), uri, "--json"], capture_output=True,
                        text=True, timeout=120)
    assert p1.returncode == 0, p1.stderr
    assert json.loads(p1.stdout)["transferred"] == 16
    p2 = subprocess.run([*run, "pull", uri, str(tmp_path / "o"), "--json"],
                        capture_output=True, text=True, timeout=120)
    assert p2.returncode == 0 and json.loads(p2.stdout)["verified"] == 16
    p3 = subprocess.run([*run, "pull", f"s3://{s3_env}/absent", str(tmp_path / "o2")],
                        capture_output=True, text=True, timeout=120)
    assert p3.returncode == 2 and "no objects under this prefix" in p3.stderr


@pytest.mark.slow
def test_train_from_s3_and_upload_artifacts(s3_env: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from dermalab.core.config import load_config
    from dermalab.pipeline import train_run

    monkeypatch.setenv("DERMALAB_CACHE", str(tmp_path / "cache"))
    src = write_photo_dataset(tmp_path / "photos", per_class=8)
    push(src, f"s3://{s3_env}/datasets/photos", progress=False)
    run = tmp_path / "runs" / "s3run"
    cfg = load_config(None, [
        f"data.source=s3://{s3_env}/datasets/photos", "data.image_size=64", "train.epochs=1",
        "train.batch_size=8", "eval.gallery=0", "tracking.enabled=true",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_location=s3://{s3_env}/mlflow",
        f"tracking.upload_to=s3://{s3_env}/runs"])
    train_run(cfg, run, progress=False)
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_env)["Contents"]]
    assert "runs/s3run/checkpoints/best.pt" in keys and "runs/s3run/report.html" in keys
    assert any(k.startswith("mlflow/") and k.endswith("metrics.json") for k in keys)
    saved = (run / "config.yaml").read_text()
    assert "testsecret" not in saved and "testkey" not in saved
    # The synced copy is reused: a second sync downloads nothing.
    cached = next((tmp_path / "cache" / "s3").iterdir())
    assert pull(f"s3://{s3_env}/datasets/photos", cached, progress=False).transferred == 0
