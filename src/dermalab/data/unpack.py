"""Unpack a downloaded archive safely: check every member first, extract nothing on doubt.

Refused before a single byte is written: a member whose path leaves the target folder
(absolute, ``..``, a drive letter: "zip-slip"), a symbolic or hard link, a device or pipe,
more members or more unpacked bytes than the limits, and a member whose compression ratio
marks a decompression bomb. While extracting, each member's bytes are counted against what
its header declared, so a lying header cannot write more. Zip members are checked against
their CRC-32 by :mod:`zipfile` as they are read.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from dermalab.core.errors import DataError

#: A member that expands more than this many times is treated as a decompression bomb (JPEG
#: and PNG barely compress; text CSVs reach ~10x).
MAX_RATIO = 200
MAX_MEMBERS = 200_000
CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Caps on what one archive may unpack to."""

    max_bytes: int = 64 * 10**9
    max_members: int = MAX_MEMBERS
    max_ratio: int = MAX_RATIO


@dataclass(frozen=True)
class Member:
    path: PurePosixPath  # relative, normalised
    size: int
    compressed: int


def _safe_relpath(name: str, archive: Path) -> PurePosixPath:
    clean = name.replace("\\", "/")
    p = PurePosixPath(clean)
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":") or ".." in p.parts:
        raise DataError(f"{archive.name}: member {name!r} would be written outside the target "
                        "folder (path traversal); the archive was refused and nothing unpacked")
    parts = [s for s in p.parts if s not in ("", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _zip_members(zf: zipfile.ZipFile, archive: Path) -> list[tuple[zipfile.ZipInfo, Member]]:
    out = []
    for info in zf.infolist():
        rel = _safe_relpath(info.filename, archive)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise DataError(f"{archive.name}: member {info.filename!r} is a symbolic link; "
                            "the archive was refused and nothing unpacked")
        if info.is_dir():
            continue
        out.append((info, Member(rel, info.file_size, info.compress_size)))
    return out


def _tar_members(tf: tarfile.TarFile, archive: Path) -> list[tuple[tarfile.TarInfo, Member]]:
    out = []
    for info in tf.getmembers():
        rel = _safe_relpath(info.name, archive)
        if info.issym() or info.islnk():
            raise DataError(f"{archive.name}: member {info.name!r} is a link; the archive was "
                            "refused and nothing unpacked")
        if info.isdir():
            continue
        if not info.isfile():
            raise DataError(f"{archive.name}: member {info.name!r} is not a regular file "
                            "(device, pipe...); the archive was refused and nothing unpacked")
        out.append((info, Member(rel, info.size, info.size)))
    return out


def _check(members: list[Member], archive: Path, limits: Limits, flatten: bool) -> None:
    if len(members) > limits.max_members:
        raise DataError(f"{archive.name}: {len(members)} members, more than the limit of "
                        f"{limits.max_members}; refused")
    total = sum(m.size for m in members)
    if total > limits.max_bytes:
        raise DataError(f"{archive.name}: would unpack to {total:,} bytes, more than the limit "
                        f"of {limits.max_bytes:,}; refused (an archive bomb or the wrong file)")
    for m in members:
        if m.size > 1_000_000 and m.size > limits.max_ratio * max(m.compressed, 1):
            ratio = m.size // max(m.compressed, 1)
            raise DataError(f"{archive.name}: member {m.path} expands {ratio}x "
                            f"({m.compressed:,} -> {m.size:,} bytes): a decompression bomb; "
                            "refused and nothing unpacked")
    if flatten:
        seen: dict[str, PurePosixPath] = {}
        for m in members:
            if m.path.name in seen:
                raise DataError(f"{archive.name}: {seen[m.path.name]} and {m.path} have the same "
                                "file name; they cannot be flattened into one folder")
            seen[m.path.name] = m.path


def _copy_limited(src: IO[bytes], dest: Path, declared: int, archive: Path, name: str) -> None:
    written = 0
    with open(dest, "wb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > declared:
                raise DataError(f"{archive.name}: member {name} holds more bytes than its header "
                                "declares; refused")
            out.write(chunk)


@contextmanager
def _open_archive(archive: Path) -> Iterator[tuple[str, zipfile.ZipFile | tarfile.TarFile]]:
    if zipfile.is_zipfile(archive):
        try:
            with zipfile.ZipFile(archive) as zf:
                yield "zip", zf
        except zipfile.BadZipFile as exc:
            raise DataError(f"{archive.name}: damaged zip archive ({exc})") from None
        return
    try:
        is_tar = tarfile.is_tarfile(archive)
    except OSError:
        is_tar = False
    if not is_tar:
        raise DataError(f"{archive.name}: not a zip or tar archive")
    try:
        with tarfile.open(archive) as tf:
            yield "tar", tf
    except tarfile.TarError as exc:
        raise DataError(f"{archive.name}: damaged tar archive ({exc})") from None


def unpack_archive(archive: Path, target: Path, *, flatten: bool = False,
                   limits: Limits | None = None) -> list[Path]:
    """Extract ``archive`` (zip or tar[.gz|.bz2|.xz]) into ``target``; return the files written.

    ``flatten`` drops the archive's folders (``HAM10000_images/ISIC_1.jpg`` -> ``ISIC_1.jpg``).
    On any error the files written so far are removed again.

    Raises:
        DataError: an unsafe or damaged archive (named, with the member at fault).
    """
    limits = limits or Limits()
    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        with _open_archive(archive) as (kind, handle):
            if kind == "zip":
                assert isinstance(handle, zipfile.ZipFile)
                zmembers = _zip_members(handle, archive)
                _check([m for _, m in zmembers], archive, limits, flatten)
                for zinfo, m in zmembers:
                    dest = _dest(target, m, flatten)
                    with handle.open(zinfo) as src:
                        _copy_limited(src, dest, m.size, archive, zinfo.filename)
                    written.append(dest)
            else:
                assert isinstance(handle, tarfile.TarFile)
                tmembers = _tar_members(handle, archive)
                _check([m for _, m in tmembers], archive, limits, flatten)
                for tinfo, m in tmembers:
                    dest = _dest(target, m, flatten)
                    src_file = handle.extractfile(tinfo)
                    if src_file is None:  # pragma: no cover (regular files always have data)
                        continue
                    with src_file:
                        _copy_limited(src_file, dest, m.size, archive, tinfo.name)
                    written.append(dest)
    except zipfile.BadZipFile as exc:  # a CRC mismatch surfaces while reading
        _remove(written)
        raise DataError(f"{archive.name}: damaged zip archive ({exc})") from None
    except BaseException:
        _remove(written)
        raise
    return written


def _dest(target: Path, m: Member, flatten: bool) -> Path:
    dest = target / (m.path.name if flatten else Path(*m.path.parts))
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def _remove(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def remove_tree(path: Path) -> None:
    """Remove a folder (or file) if present; no error when it is already gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)
