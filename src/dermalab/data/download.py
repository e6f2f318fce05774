"""Download a named dataset: resumable, verified, unpacked safely, landed atomically.

Files are fetched with ``httpx`` into ``<root>/.partial/<name>/downloads/<file>.part``,
resuming an interrupted transfer with an HTTP ``Range`` request (retried a few times within
one run, and again on the next run), verified against the catalog's published MD5 and size,
then unpacked (:mod:`dermalab.data.unpack`) into a staging folder beside the dataset. Only
when every requested part is verified and unpacked is the staging folder renamed into place
(one ``rename`` on one file system) with ``.dermalab-dataset.json`` recording the parts and
checksums, so a half-downloaded or failed dataset never looks complete.

Why not pooch: its ``retrieve`` verifies hashes and writes atomically, but it restarts an
interrupted download from byte 0, which for HAM10000's 2.8 GB or ISIC 2019's 9 GB on a weak
connection means never finishing; the transfer itself is ``httpx`` and the progress bar
``tqdm``, both well-kept.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from tqdm.auto import tqdm

from dermalab.core.atomic import atomic_write_text
from dermalab.core.errors import DataError
from dermalab.core.settings import settings
from dermalab.data.catalog import (
    MARKER,
    PARTIAL_DIR,
    DatasetEntry,
    LocalState,
    RemoteFile,
    catalog_entry,
    data_home,
    dataset_path,
    human_bytes,
    load_catalog,
    local_state,
    parse_location,
)
from dermalab.data.images import is_image_name
from dermalab.data.unpack import Limits, remove_tree, unpack_archive

CHUNK = 1 << 20
RETRIES = 3
USER_AGENT = "dermalab (dataset download; https://github.com/dermalab)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(DataError):
    """A dataset could not be fetched; the message names the dataset, the file and the URL."""


@dataclass(frozen=True)
class Fetched:
    path: Path
    md5: str
    sha256: str
    size: int


def _digests(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def file_url(dataset: str, f: RemoteFile, mirror: str | None) -> str:
    """The file's published URL, or ``<mirror>/<dataset>/<file name>``."""
    return f"{mirror.rstrip('/')}/{dataset}/{f.name}" if mirror else f.url


def _disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def fetch_file(dataset: str, f: RemoteFile, url: str, folder: Path, *,
               client: httpx.Client, progress: bool = True, retries: int = RETRIES) -> Fetched:
    """Download one file into ``folder`` (resuming ``<name>.part``) and verify it.

    A file already downloaded and verified (``<name>``) is checked again and reused.

    Raises:
        DownloadError: HTTP error, no network, full disk, or a checksum/size mismatch (the bad
            file is deleted); each message names the dataset, the file and the URL.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final, part = folder / f.name, folder / (f.name + ".part")
    if final.is_file():
        got, _ = _verify(f, final)
        if got is not None:
            return got
    attempt = 0
    while True:
        try:
            _transfer(dataset, f, url, part, client=client, progress=progress)
            break
        except (httpx.TransportError, _TruncatedError) as exc:
            attempt += 1
            if isinstance(exc, httpx.ConnectError) or attempt > retries:
                what = ("cannot connect" if isinstance(exc, httpx.ConnectError)
                        else f"the connection failed {attempt} times")
                kept = part.stat().st_size if part.exists() else 0
                resume = (f"; {human_bytes(kept)} kept, run the same command again to resume"
                          if kept else "")
                raise DownloadError(f"{dataset}: {what} while downloading {f.name} from {url} "
                                    f"({type(exc).__name__}: {exc}){resume}; check the network "
                                    "or pass --mirror URL") from None
            time.sleep(min(0.2 * attempt, 2.0))
        except OSError as exc:
            if _disk_full(exc):
                raise DownloadError(f"{dataset}: the disk is full while writing {part} "
                                    f"(downloading {f.name} from {url}); free space or pass "
                                    "--to DIR on a larger disk") from None
            raise
    part.replace(final)
    got, why = _verify(f, final)
    if got is None:
        final.unlink(missing_ok=True)
        raise DownloadError(f"{dataset}: {f.name} from {url} does not match its published "
                            f"checksum ({why}); the download was deleted. Run the command "
                            "again; if it fails the same way, the server (or mirror) serves a "
                            "different file than the catalog records")
    return got


def _verify(f: RemoteFile, path: Path) -> tuple[Fetched | None, str]:
    """The file's digests if it matches the catalog's size and MD5, else (None, why)."""
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        return None, f"size {size:,} bytes, expected {f.size:,}"
    md5, sha = _digests(path)
    if f.md5 is not None and md5 != f.md5:
        return None, f"MD5 {md5}, expected {f.md5}"
    return Fetched(path, md5, sha, size), ""


class _TruncatedError(Exception):
    """The server closed the connection before the announced end of the file."""


def _transfer(dataset: str, f: RemoteFile, url: str, part: Path, *, client: httpx.Client,
              progress: bool) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if f.size is not None and offset > f.size:  # not the file we want: start again
        part.unlink()
        offset = 0
    # identity: byte offsets must count the file's bytes, not a compressed transfer's
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with client.stream("GET", url, headers=headers) as resp:
        if resp.status_code == 416 and offset:  # nothing after offset: already complete
            return
        if resp.status_code >= 400:
            raise DownloadError(f"{dataset}: {url} answered HTTP {resp.status_code} "
                                f"{resp.reason_phrase} for {f.name}; try again later or pass "
                                "--mirror URL")
        start = 0
        if resp.status_code == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("content-range", ""))
            if not m or int(m.group(1)) > offset:
                raise DownloadError(f"{dataset}: {url} answered a range request with "
                                    f"{resp.headers.get('content-range')!r} for {f.name}")
            start = int(m.group(1))  # a server may resend from earlier: honour it
        length = resp.headers.get("content-length")
        expected_end = start + int(length) if length is not None else f.size
        mode = "r+b" if start else "wb"  # "wb" starts the file afresh
        bar = tqdm(total=f.size or expected_end, initial=start, unit="B", unit_scale=True,
                   desc=f.name, disable=not progress, file=sys.stderr, leave=False)
        done = start
        try:
            with open(part, mode) as out:
                out.seek(start)
                out.truncate()
                # raw bytes as they arrive: what came before a dropped connection is kept
                for chunk in resp.iter_raw():
                    out.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
        except httpx.RemoteProtocolError as exc:
            raise _TruncatedError(str(exc)) from None
        finally:
            bar.close()
        if expected_end is not None and done < expected_end:
            raise _TruncatedError(f"{done:,} of {expected_end:,} bytes received")


# ---------------------------------------------------------------------------------------------
# a dataset


def notice(entry: DatasetEntry, parts: Iterable[str]) -> str:
    """What the user is about to download: size, license and how to cite."""
    parts = list(parts)
    cites = list(entry.citation) + [c for p in parts for c in entry.parts[p].citation]
    lines = [f"Downloading {entry.name} ({', '.join(parts)}): {entry.size_text(parts)}"
             + (" - a large download, it takes a while" if entry.large else ""),
             f"  {entry.title}", f"  from {entry.homepage}",
             f"  license: {entry.license}", "  cite: " + "\n        ".join(cites)]
    return "\n".join(lines)


def _check_space(entry: DatasetEntry, parts: list[str], root: Path) -> None:
    need = sum(2 * (f.size or 0) for p in parts for f in entry.parts[p].files)  # file + unpacked
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if need and free < need:
        raise DownloadError(f"{entry.name}: needs about {human_bytes(need)} of free disk (the "
                            f"archives and their contents) but {root} has {human_bytes(free)}; "
                            "free space or pass --to DIR on a larger disk")


def _count_images(paths: Iterable[Path]) -> int:
    return sum(1 for p in paths if is_image_name(p.name))


def download_dataset(name: str, *, root: Path | None = None, parts: Iterable[str] | None = None,
                     mirror: str | None = None, catalog: str | Path | None = None,
                     progress: bool = True, log: Callable[[str], None] | None = None,
                     limits: Limits | None = None) -> Path:
    """Download, verify and unpack ``parts`` of dataset ``name`` into ``root/name``.

    Parts already installed are skipped. Returns the dataset folder.

    Raises:
        DownloadError / DataError: unknown dataset or part, network/HTTP/checksum/disk
            problems, an unsafe archive; nothing half-made is left looking complete.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    entries = load_catalog(catalog)
    entry = catalog_entry(name, entries)
    root = root or data_home()
    if entry.manual:
        raise DataError(f"{name} cannot be downloaded by dermalab: {entry.manual} Place it at "
                        f"{root / name}.")
    wanted = list(parts) if parts else entry.default_parts()
    unknown = [p for p in wanted if p not in entry.parts]
    if unknown:
        raise DataError(f"{name} has no part(s) {unknown}; parts: {', '.join(entry.parts)}")
    state = local_state(entry, root)
    if state.exists and not state.managed:
        raise DataError(f"{state.path} already holds a copy of {name} that dermalab did not "
                        "download; it is used as it is. Pass --to DIR to download elsewhere")
    todo = [p for p in wanted if p not in state.parts]
    if not todo:
        log(f"{name}: {', '.join(wanted)} already downloaded in {state.path}")
        return state.path
    log(notice(entry, todo))
    _check_space(entry, todo, root)
    work = root / PARTIAL_DIR / name
    staging = work / "staging"
    remove_tree(staging)  # a staging folder from a failed run is never trusted
    installed: dict[str, dict[str, dict[str, object]]] = {}
    try:
        with httpx.Client(follow_redirects=True, headers={"User-Agent": USER_AGENT},
                          timeout=httpx.Timeout(30.0, read=120.0)) as client:
            for pname in todo:
                installed[pname] = {}
                for f in entry.parts[pname].files:
                    url = file_url(name, f, mirror)
                    got = fetch_file(name, f, url, work / "downloads", client=client,
                                     progress=progress)
                    record: dict[str, object] = {"url": url, "bytes": got.size, "md5": got.md5,
                                                 "sha256": got.sha256,
                                                 "md5_published": f.md5 is not None}
                    if f.unpack is not None:
                        files = unpack_archive(got.path, staging / f.unpack, flatten=f.flatten,
                                               limits=limits)
                        n_images = _count_images(files)
                        if f.expect_images is not None and n_images != f.expect_images:
                            got.path.unlink()
                            raise DownloadError(
                                f"{name}: {f.name} from {url} holds {n_images} images, "
                                f"expected {f.expect_images}; the download was deleted")
                        record.update(unpacked_to=f.unpack, files=len(files), images=n_images)
                        if f.md5 is None:
                            log(f"  {f.name}: no published checksum; checked by the archive's "
                                f"CRCs and {n_images} images; sha256 {got.sha256}")
                    else:
                        dest = staging / f.name
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(got.path, dest)
                    installed[pname][f.name] = record
    except BaseException as exc:
        remove_tree(staging)
        _prune_empty(root / PARTIAL_DIR)  # only resumable .part files and verified files stay
        if isinstance(exc, OSError) and _disk_full(exc):
            raise DownloadError(f"{name}: the disk is full under {root}; free space or pass "
                                "--to DIR on a larger disk") from None
        raise
    _land(entry, state, staging, installed)
    remove_tree(work)  # the verified archives are kept until here, so a failed run reuses them
    with contextlib.suppress(OSError):  # other datasets may be mid-download
        (root / PARTIAL_DIR).rmdir()
    log(f"{name}: {', '.join(todo)} ready in {state.path}")
    return state.path


def _prune_empty(folder: Path) -> None:
    if not folder.is_dir():
        return
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


def _land(entry: DatasetEntry, state: LocalState, staging: Path,
          installed: dict[str, dict[str, dict[str, object]]]) -> None:
    """Move the staged parts into the dataset folder; the marker is written last."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    parts = dict(state.parts)
    parts.update({p: {"files": files, "completed": now} for p, files in installed.items()})
    marker = {"name": entry.name, "title": entry.title, "license": entry.license,
              "homepage": entry.homepage, "parts": parts}
    staging.mkdir(parents=True, exist_ok=True)
    if not state.exists:
        atomic_write_text(staging / MARKER, json.dumps(marker, indent=2))
        state.path.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(state.path)  # one atomic step: the dataset appears complete or not at all
        return
    # Adding parts to a dataset already here: move each entry in (replacing what a failed
    # earlier attempt may have left), then list the parts in the marker, atomically.
    for item in staging.iterdir():
        dest = state.path / item.name
        if item.is_dir() and dest.is_dir():
            for sub in item.iterdir():
                remove_tree(dest / sub.name)
                sub.rename(dest / sub.name)
        else:
            remove_tree(dest)
            item.rename(dest)
    atomic_write_text(state.path / MARKER, json.dumps(marker, indent=2))


# ---------------------------------------------------------------------------------------------
# data.source: NAME


def resolve_dataset(location: str, *, progress: bool = True,
                    catalog: str | Path | None = None) -> Path | None:
    """The local path of a named dataset (downloading it on first use); None when
    ``location`` does not name one. A copy already in place is used with no network at all.
    """
    entries = load_catalog(catalog)
    found = parse_location(location, entries)
    if found is None:
        return None
    entry, part = found
    needed = entry.default_parts() if part is None else [part]
    state = local_state(entry)
    if entry.manual and not state.exists:
        raise DataError(f"{entry.name}: not downloadable; {entry.manual} Place it at "
                        f"{state.path} (or set DERMALAB_DATA).")
    if not state.has(needed):
        download_dataset(entry.name, parts=needed, progress=progress, catalog=catalog,
                         mirror=settings().mirror)
        state = local_state(entry)
    return dataset_path(entry, part, state)

