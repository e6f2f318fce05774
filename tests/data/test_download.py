"""Named datasets: download from a real HTTP server on 127.0.0.1 that serves archives with the
real HAM10000 layouts built from real images, resume after a dropped connection, refuse a
corrupted or unsafe archive leaving nothing half-made, and resolve ``data.source: ham10000``
to the cached copy with no network at all."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import socket
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dermalab.cli import main
from dermalab.core.config import DataConfig, load_config
from dermalab.core.errors import DataError
from dermalab.data.catalog import MARKER, load_catalog, parse_location
from dermalab.data.download import DownloadError, download_dataset, resolve_dataset
from dermalab.data.sources import load_source
from dermalab.data.unpack import Limits, unpack_archive
from tests.conftest import HAM_DIR
from tests.httpserver import FileServer

pytestmark = pytest.mark.skipif(not HAM_DIR.is_dir(), reason=f"real HAM10000 not at {HAM_DIR}")

BUILTIN = yaml.safe_load((Path(__file__).resolve().parents[2] / "src" / "dermalab" / "data"
                          / "datasets.yaml").read_text())


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def ham_files() -> dict[str, bytes]:
    """The four HAM10000 files with their real layouts, holding 12 real images of 4 classes:
    the image archives with JPEGs at the top level, the original metadata CSV, and the
    segmentations zip with its ``HAM10000_segmentations_lesion_tschandl/`` folder."""
    with open(HAM_DIR / "HAM10000_metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    picked: list[dict[str, str]] = []
    for dx in ("nv", "mel", "bkl", "bcc"):
        picked += [r for r in rows if r["dx"] == dx][:3]
    images = {r["image_id"]: (HAM_DIR / "images" / f"{r['image_id']}.jpg").read_bytes()
              for r in picked}
    ids = list(images)
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(picked)
    masks = {f"HAM10000_segmentations_lesion_tschandl/{i}_segmentation.png":
             (HAM_DIR / "masks" / f"{i}_segmentation.png").read_bytes() for i in ids}
    return {
        "HAM10000_metadata.csv": out.getvalue().encode(),
        "HAM10000_images_part_1.zip": _zip({f"{i}.jpg": images[i] for i in ids[:6]}),
        "HAM10000_images_part_2.zip": _zip({f"{i}.jpg": images[i] for i in ids[6:]}),
        "HAM10000_segmentations_lesion_tschandl.zip": _zip(masks),
    }


def _catalog(path: Path, files: dict[str, bytes], expect: dict[str, int] | None = None) -> Path:
    """The built-in ham10000 entry, unchanged except each file's size and MD5 (and expected
    image count), which are those of the test archives."""
    entry = json.loads(json.dumps(BUILTIN["ham10000"]))
    for part in entry["parts"].values():
        for f in part["files"]:
            data = files[f["name"]]
            f["size"], f["md5"] = len(data), hashlib.md5(data).hexdigest()
            if "expect_images" in f:
                f["expect_images"] = (expect or {}).get(f["name"], 6)
    path.write_text(yaml.safe_dump({"ham10000": entry}, sort_keys=False))
    return path


@pytest.fixture
def server(ham_files: dict[str, bytes]) -> Iterator[FileServer]:
    srv = FileServer(files={f"/ham10000/{k}": v for k, v in ham_files.items()}).start()
    yield srv
    srv.stop()


@pytest.fixture
def catalog(tmp_path: Path, ham_files: dict[str, bytes]) -> Path:
    return _catalog(tmp_path / "catalog.yaml", ham_files)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_builtin_catalog_records_every_url_and_checksum() -> None:
    cat = load_catalog()
    assert {"ham10000", "dermamnist", "isic2019"} <= set(cat)
    ham = cat["ham10000"]
    assert ham.default_parts() == ["metadata", "images"]
    assert [f.md5 for f in ham.parts["images"].files] == ["4639bfa73ab251610530a97c898e6e46",
                                                           "da43d6cc50f6613013be07e8986b384b"]
    assert sorted(cat["dermamnist"].parts) == ["128", "224", "28", "64"]
    for entry in cat.values():
        for part in entry.parts.values():
            for f in part.files:
                assert f.url.startswith("https://"), f.url
                assert f.md5 is None or len(f.md5) == 32
                assert f.size is not None or f.approx is not None
    # ISIC publishes no checksum: the catalog says so rather than inventing one.
    assert all(f.md5 is None for p in cat["isic2019"].parts.values() for f in p.files)
    entry, part = parse_location("dataset://dermamnist/128", cat)  # type: ignore[misc]
    assert (entry.name, part) == ("dermamnist", "128")
    with pytest.raises(DataError, match="no part '512'"):
        parse_location("dataset://dermamnist/512", cat)
    with pytest.raises(DataError, match=r"unknown dataset 'ham1000'.*ham10000"):
        parse_location("dataset://ham1000", cat)


def test_a_dataset_that_cannot_be_downloaded_says_how_to_get_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DermNet NZ's terms forbid redistribution: its entry is `manual`. Missing, it is one line
    saying where to put it; placed (or linked) there, it resolves with no network."""
    monkeypatch.setenv("DERMALAB_DATA", str(tmp_path))
    entry = load_catalog()["dermnet_clinical"]
    assert entry.manual and not entry.parts
    with pytest.raises(DataError, match=r"not downloadable.*Place it at .*dermnet_clinical"):
        resolve_dataset("dermnet_clinical")
    with pytest.raises(DataError, match="cannot be downloaded by dermalab"):
        download_dataset("dermnet_clinical", root=tmp_path)
    (tmp_path / "dermnet_clinical" / "Psoriasis").mkdir(parents=True)
    assert resolve_dataset("dermnet_clinical") == tmp_path / "dermnet_clinical"
    with pytest.raises(DataError, match="at least one part"):
        from dermalab.data.catalog import _parse_entry

        _parse_entry("x", {"title": "no parts and no manual"})


def test_download_then_inspect(tmp_path: Path, server: FileServer, catalog: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "datasets"
    rc = main(["data", "download", "ham10000", "--to", str(root), "--mirror", server.url,
               "--catalog", str(catalog), "--parts", "metadata", "images", "masks",
               "--no-progress"])
    assert rc == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(root / "ham10000")
    assert "license: CC BY-NC 4.0" in err and "doi:10.1038/sdata.2018.161" in err
    ham = root / "ham10000"
    assert len(list((ham / "images").glob("ISIC_*.jpg"))) == 12
    assert len(list((ham / "masks").glob("ISIC_*_segmentation.png"))) == 12
    marker = json.loads((ham / MARKER).read_text())
    assert sorted(marker["parts"]) == ["images", "masks", "metadata"]
    assert marker["parts"]["images"]["files"]["HAM10000_images_part_2.zip"]["images"] == 6
    assert not (root / ".partial").exists()  # archives removed once unpacked
    # every image is byte-identical to the source it came from
    for p in (ham / "images").iterdir():
        assert p.read_bytes() == (HAM_DIR / "images" / p.name).read_bytes()

    rc = main(["data", "inspect", str(ham), "--json", "--set", f"data.masks={ham / 'masks'}",
               "data.split_ratios=[0.5,0.25,0.25]"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert report["n_images"] == report["n_readable"] == 12
    assert report["format"] == "ham10000" and report["group_overlap"] == 0
    assert report["masks"]["with_mask"] == 12

    # a second download of what is there fetches nothing
    n = len(server.requests)
    assert main(["data", "download", "ham10000", "--to", str(root), "--mirror", server.url,
                 "--catalog", str(catalog), "--parts", "masks"]) == 0
    assert len(server.requests) == n
    assert "already downloaded" in capsys.readouterr().err
    # and `data list` says it is cached, with its parts
    main(["data", "list", "--to", str(root), "--catalog", str(catalog), "--json"])
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["ham10000"]["cached"] == "downloaded"
    assert listed["ham10000"]["parts"]["masks"]["downloaded"] is True
    assert listed["dermamnist"]["cached"] == "no"


def test_dropped_connection_resumes_with_a_range_request(tmp_path: Path, server: FileServer,
                                                          catalog: Path) -> None:
    server.drop["/ham10000/HAM10000_images_part_1.zip"] = 1
    path = download_dataset("ham10000", root=tmp_path, mirror=server.url, catalog=catalog,
                            progress=False, log=lambda _: None)
    seen = [r for r in server.requests if r.path.endswith("part_1.zip")]
    assert len(seen) == 2
    assert seen[0].range is None and seen[1].range is not None
    offset = int(seen[1].range.removeprefix("bytes=").rstrip("-"))
    assert offset > 0  # the second request continued where the first broke off
    assert len(list((path / "images").iterdir())) == 12


def test_interrupted_download_resumes_on_the_next_run(tmp_path: Path, server: FileServer,
                                                      catalog: Path) -> None:
    name = "/ham10000/HAM10000_images_part_2.zip"
    server.drop[name] = 100  # every attempt of this run breaks off
    with pytest.raises(DownloadError) as err:
        download_dataset("ham10000", root=tmp_path, mirror=server.url, catalog=catalog,
                         progress=False, log=lambda _: None)
    msg = str(err.value)
    assert "ham10000" in msg and f"{server.url}{name}" in msg and "resume" in msg
    assert not (tmp_path / "ham10000").exists()  # nothing looks complete
    kept = tmp_path / ".partial" / "ham10000" / "downloads" / "HAM10000_images_part_2.zip.part"
    kept_size = kept.stat().st_size
    assert kept_size > 0
    server.drop.clear()
    server.requests.clear()
    path = download_dataset("ham10000", root=tmp_path, mirror=server.url, catalog=catalog,
                            progress=False, log=lambda _: None)
    again = [r for r in server.requests if r.path == name]
    assert [r.range for r in again] == [f"bytes={kept_size}-"]
    # part 1 was verified in the first run and is not fetched again
    assert not [r for r in server.requests if r.path.endswith("part_1.zip")]
    assert len(list((path / "images").iterdir())) == 12


def test_corrupted_archive_is_refused_and_nothing_is_left(tmp_path: Path, server: FileServer,
                                                         catalog: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    name = "/ham10000/HAM10000_images_part_2.zip"
    good = server.files[name]
    server.files[name] = good[:100] + bytes([good[100] ^ 0xFF]) + good[101:]  # same size
    rc = main(["data", "download", "ham10000", "--to", str(tmp_path), "--mirror", server.url,
               "--catalog", str(catalog), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2
    assert err.startswith("error: ham10000: HAM10000_images_part_2.zip from "
                          f"{server.url}{name} does not match its published checksum (MD5 ")
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "ham10000").exists()
    left = _leftovers(tmp_path)
    assert not [p for p in left if "part_2" in p or "staging" in p], left


def test_http_error_and_no_network_name_the_dataset_and_url(tmp_path: Path, server: FileServer,
                                                             catalog: Path) -> None:
    server.status["/ham10000/HAM10000_metadata.csv"] = 503
    with pytest.raises(DownloadError, match=r"ham10000: http://127\.0\.0\.1:\d+/ham10000/"
                                            r"HAM10000_metadata\.csv answered HTTP 503"):
        download_dataset("ham10000", root=tmp_path, mirror=server.url, catalog=catalog,
                         progress=False, log=lambda _: None)
    dead = _closed_port_url()
    with pytest.raises(DownloadError, match=rf"ham10000: cannot connect while downloading "
                                            rf"HAM10000_metadata\.csv from {dead}/ham10000/"):
        download_dataset("ham10000", root=tmp_path, mirror=dead, catalog=catalog,
                         progress=False, log=lambda _: None)
    assert not (tmp_path / "ham10000").exists()


def test_not_enough_disk_is_said_before_downloading(tmp_path: Path, server: FileServer,
                                                    catalog: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: real._replace(free=1000))
    with pytest.raises(DownloadError, match=r"ham10000: needs about .* of free disk .* has "
                                            r"1.00 kB; free space"):
        download_dataset("ham10000", root=tmp_path, mirror=server.url, catalog=catalog,
                         progress=False, log=lambda _: None)
    assert server.requests == []


def test_wrong_image_count_is_refused(tmp_path: Path, server: FileServer,
                                      ham_files: dict[str, bytes]) -> None:
    cat = _catalog(tmp_path / "c.yaml", ham_files, {"HAM10000_images_part_1.zip": 5000})
    with pytest.raises(DownloadError, match=r"part_1\.zip from .* holds 6 images, expected 5000"):
        download_dataset("ham10000", root=tmp_path / "d", mirror=server.url, catalog=cat,
                         progress=False, log=lambda _: None)
    assert not (tmp_path / "d" / "ham10000").exists()


def test_zip_slip_archive_is_refused(tmp_path: Path, server: FileServer,
                                     ham_files: dict[str, bytes]) -> None:
    evil = _zip({"HAM10000_segmentations_lesion_tschandl/ISIC_1_segmentation.png": b"x",
                 "../../escaped.png": b"gotcha"})
    files = {**ham_files, "HAM10000_segmentations_lesion_tschandl.zip": evil}
    server.files["/ham10000/HAM10000_segmentations_lesion_tschandl.zip"] = evil
    cat = _catalog(tmp_path / "c.yaml", files)
    root = tmp_path / "d"
    download_dataset("ham10000", root=root, mirror=server.url, catalog=cat, progress=False,
                     log=lambda _: None)
    with pytest.raises(DataError, match=r"'\.\./\.\./escaped\.png' would be written outside"):
        download_dataset("ham10000", root=root, mirror=server.url, catalog=cat,
                         parts=["masks"], progress=False, log=lambda _: None)
    assert not list(tmp_path.rglob("escaped.png"))
    assert not (root / "ham10000" / "masks").exists()
    marker = json.loads((root / "ham10000" / MARKER).read_text())
    assert "masks" not in marker["parts"]  # the part is not recorded as installed


def _zip_with_symlink(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("link.jpg")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return path


def test_unsafe_archives_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"'link\.jpg' is a symbolic link"):
        unpack_archive(_zip_with_symlink(tmp_path / "l.zip"), out)
    tar_path = tmp_path / "t.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        ok = tarfile.TarInfo("a.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        link = tarfile.TarInfo("b.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        tf.addfile(link)
    with pytest.raises(DataError, match=r"'b\.jpg' is a link"):
        unpack_archive(tar_path, out)
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(_zip({"zeros.bin": bytes(50_000_000)}))
    with pytest.raises(DataError, match="decompression bomb"):
        unpack_archive(bomb, out)
    with pytest.raises(DataError, match="more than the limit"):
        unpack_archive(bomb, out, limits=Limits(max_bytes=1000, max_ratio=10**9))
    with pytest.raises(DataError, match=r"outside the target"):
        unpack_archive(_zipfile_abs(tmp_path / "abs.zip"), out)
    assert not out.exists() or _leftovers(out) == []
    not_archive = tmp_path / "x.zip"
    not_archive.write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match="not a zip or tar archive"):
        unpack_archive(not_archive, out)


def _zipfile_abs(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(zipfile.ZipInfo("/tmp/abs.txt"), b"x")
    return path


def test_named_source_downloads_on_first_use_then_needs_no_network(
        tmp_path: Path, server: FileServer, catalog: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "datasets"
    monkeypatch.setenv("DERMALAB_DATA", str(root))
    monkeypatch.setenv("DERMALAB_CATALOG", str(catalog))
    monkeypatch.setenv("DERMALAB_MIRROR", server.url)
    monkeypatch.chdir(tmp_path)
    first = load_source(DataConfig(source="ham10000"))  # not there yet: downloaded now
    assert len(first.samples) == 12
    assert "Downloading ham10000 (metadata, images)" in capsys.readouterr().err
    assert (root / "ham10000" / MARKER).is_file() and server.requests
    server.stop()
    monkeypatch.setenv("DERMALAB_MIRROR", _closed_port_url())  # any request would fail
    import httpx

    def no_network(*_: object, **__: object) -> None:
        raise AssertionError("a cached dataset must not touch the network")

    monkeypatch.setattr(httpx, "Client", no_network)
    for source in ("ham10000", "dataset://ham10000"):
        data = load_source(DataConfig(source=source))
        assert len(data.samples) == 12 and data.kind == "ham10000"
        assert all(Path(s.path).is_relative_to(root / "ham10000") for s in data.samples)
    # a recipe naming the dataset by a bare word (no such file beside it) resolves the same
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data:\n  source: ham10000\n")
    cfg = load_config(recipe)
    assert cfg.data.source == "ham10000"
    assert len(load_source(cfg.data).samples) == 12


def test_a_local_copy_is_used_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """What CI does: link the shared copy where the dataset would be downloaded to."""
    root = tmp_path / "datasets"
    root.mkdir()
    os.symlink(HAM_DIR, root / "ham10000")
    monkeypatch.setenv("DERMALAB_DATA", str(root))
    monkeypatch.setenv("DERMALAB_MIRROR", _closed_port_url())
    cfg = DataConfig(source="dataset://ham10000")
    assert len(load_source(cfg).samples) == 10015
    with pytest.raises(DataError, match="did not download"):
        download_dataset("ham10000", root=root, parts=["masks"], progress=False,
                         log=lambda _: None)
    assert main(["data", "list", "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["ham10000"]["cached"] == "local copy"


def test_isic2019_format(tmp_path: Path) -> None:
    """The ISIC 2019 layout: one-hot ground truth, metadata with lesion ids, images/."""
    root = tmp_path / "isic2019"
    (root / "images").mkdir(parents=True)
    src = sorted((HAM_DIR / "images").iterdir())[:5]
    names = [p.stem for p in src]
    for p in src:
        (root / "images" / p.name).write_bytes(p.read_bytes())
    cols = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    hot = ["MEL", "NV", "SCC", "NV", "AK"]
    with open(root / "ISIC_2019_Training_GroundTruth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *cols])
        for n, h in zip(names, hot, strict=True):
            w.writerow([n, *("1.0" if c == h else "0.0" for c in cols)])
    with open(root / "ISIC_2019_Training_Metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "age_approx", "anatom_site_general", "lesion_id", "sex"])
        w.writerow([names[0], "55.0", "anterior torso", "BCN_1", "male"])
        w.writerow([names[1], "", "", "BCN_1", "female"])
    data = load_source(DataConfig(source=str(root)))
    assert data.kind == "isic2019"
    assert data.classes == ["akiec", "mel", "nv", "scc"]
    by_id = {s.sample_id: s for s in data.samples}
    assert by_id[names[0]].group == by_id[names[1]].group == "BCN_1"
    assert by_id[names[2]].group == names[2]  # no lesion id: its own group
    assert by_id[names[0]].meta["age"] == 55.0 and by_id[names[1]].meta["age_missing"]
    with open(root / "ISIC_2019_Training_GroundTruth.csv", "a", newline="") as f:
        csv.writer(f).writerow([names[4], *("1.0" for _ in cols)])
    with pytest.raises(DataError, match=r"GroundTruth\.csv:7: 9 classes marked"):
        load_source(DataConfig(source=str(root)))
