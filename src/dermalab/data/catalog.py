"""Named datasets: the catalog (``datasets.yaml``), where each one lives locally, and which
of its parts are installed.

``data.source: ham10000`` (or ``dataset://ham10000``, ``dataset://dermamnist/128``) names a
dataset of the catalog. It resolves to ``$DERMALAB_DATA/<name>`` (default
``~/.cache/dermalab/datasets/<name>``). A folder already there is used as it is: either one
dermalab downloaded (its ``.dermalab-dataset.json`` lists the installed parts and their
checksums) or a copy put there by hand or linked (the CI machines link ``../shared/data``).
Only a missing dataset, or a missing part of one dermalab downloaded, is fetched.

A user catalog (``--catalog FILE`` or ``$DERMALAB_CATALOG``) adds datasets or replaces
built-in entries, e.g. an institution's own mirror with its own checksums.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dermalab.core.errors import DataError
from dermalab.core.settings import settings

SCHEME = "dataset://"
MARKER = ".dermalab-dataset.json"
PARTIAL_DIR = ".partial"


@dataclass(frozen=True)
class RemoteFile:
    """One published file: where it is, how big, its published MD5, how it unpacks."""

    name: str
    url: str
    size: int | None = None
    approx: int | None = None  # rough size in bytes, shown but not checked
    md5: str | None = None
    unpack: str | None = None
    flatten: bool = False
    expect_images: int | None = None


@dataclass(frozen=True)
class Part:
    """A downloadable piece of a dataset (images, metadata, masks, one resolution...)."""

    name: str
    files: tuple[RemoteFile, ...]
    default: bool = True
    description: str = ""
    source: str | None = None
    citation: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetEntry:
    """A catalog entry: what the dataset is, its terms, and its parts."""

    name: str
    title: str
    homepage: str
    license: str
    citation: tuple[str, ...]
    format: str
    source: str
    parts: Mapping[str, Part]
    large: bool = False
    # set for a dataset dermalab cannot download (its terms forbid redistribution): how to
    # obtain it; the user places it in the dataset folder by hand
    manual: str = ""

    def default_parts(self) -> list[str]:
        return [p for p, part in self.parts.items() if part.default]

    def size_text(self, parts: Iterable[str]) -> str:
        """Total size of ``parts``: exact where the catalog knows it, else the approximation."""
        files = [f for p in parts for f in self.parts[p].files]
        total = sum(f.size if f.size is not None else (f.approx or 0) for f in files)
        rough = any(f.size is None for f in files)
        return ("about " if rough else "") + human_bytes(total)


def human_bytes(n: float) -> str:
    """``1366522108`` -> ``1.37 GB`` (decimal units, as download sites print them)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"  # pragma: no cover (loop always returns)


# ---------------------------------------------------------------------------------------------
# loading the catalog


def _text(value: Any) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def _parse_file(raw: Mapping[str, Any], where: str) -> RemoteFile:
    try:
        name, url = str(raw["name"]), str(raw["url"])
    except (KeyError, TypeError):
        raise DataError(f"dataset catalog: {where}: every file needs a name and a url") from None
    if "/" in name or "\\" in name or name.startswith("."):
        raise DataError(f"dataset catalog: {where}: file name {name!r} must be a plain name")
    unpack = raw.get("unpack")
    if unpack is not None and (Path(str(unpack)).is_absolute() or ".." in Path(str(unpack)).parts):
        raise DataError(f"dataset catalog: {where}: unpack folder {unpack!r} must stay inside "
                        "the dataset folder")
    md5 = raw.get("md5")
    return RemoteFile(
        name=name, url=url,
        size=int(raw["size"]) if raw.get("size") is not None else None,
        approx=int(raw["approx"]) if raw.get("approx") is not None else None,
        md5=str(md5).lower() if md5 else None,
        unpack=str(unpack) if unpack is not None else None,
        flatten=bool(raw.get("flatten", False)),
        expect_images=int(raw["expect_images"]) if raw.get("expect_images") else None,
    )


def _as_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    return tuple(_text(v) for v in items)


def _parse_entry(name: str, raw: Any) -> DatasetEntry:
    manual = _text(raw.get("manual")) if isinstance(raw, dict) else ""
    if not isinstance(raw, dict) or (not manual and (
            not isinstance(raw.get("parts"), dict) or not raw["parts"])):
        raise DataError(f"dataset catalog: {name}: needs a mapping with at least one part "
                        "(or `manual:`, how to obtain a dataset that cannot be downloaded)")
    parts = {}
    for pname, praw in (raw.get("parts") or {}).items():
        pname = str(pname)
        if not isinstance(praw, dict) or not praw.get("files"):
            raise DataError(f"dataset catalog: {name}/{pname}: a part needs files")
        files = tuple(_parse_file(f, f"{name}/{pname}") for f in praw["files"])
        parts[pname] = Part(name=pname, files=files, default=bool(praw.get("default", True)),
                            description=_text(praw.get("description")),
                            source=praw.get("source"), citation=_as_list(praw.get("citation")))
    return DatasetEntry(
        name=name, title=_text(raw.get("title")) or name, homepage=str(raw.get("homepage", "")),
        license=_text(raw.get("license")) or "not stated", citation=_as_list(raw.get("citation")),
        format=str(raw.get("format", "auto")), source=str(raw.get("source", ".")),
        parts=parts, large=bool(raw.get("large", False)), manual=manual,
    )


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"dataset catalog {where}: not valid YAML ({exc})") from None
    if not isinstance(tree, dict):
        raise DataError(f"dataset catalog {where}: must map dataset names to entries")
    return tree


def load_catalog(extra: str | Path | None = None) -> dict[str, DatasetEntry]:
    """The built-in catalog, with ``extra`` (or ``$DERMALAB_CATALOG``) laid over it."""
    text = resources.files("dermalab.data").joinpath("datasets.yaml").read_text("utf-8")
    tree = _read_yaml(text, "(built in)")
    extra = extra or settings().catalog
    if extra:
        path = Path(extra).expanduser()
        if not path.is_file():
            raise DataError(f"dataset catalog {path}: no such file")
        tree.update(_read_yaml(path.read_text("utf-8"), str(path)))
    return {str(k): _parse_entry(str(k), v) for k, v in tree.items()}


def catalog_entry(name: str, catalog: Mapping[str, DatasetEntry]) -> DatasetEntry:
    if name not in catalog:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(catalog))} "
                        "(dermalab data list)")
    return catalog[name]


# ---------------------------------------------------------------------------------------------
# where datasets live and what is installed


def data_home() -> Path:
    """``$DERMALAB_DATA`` or ``<cache>/datasets`` (``$DERMALAB_CACHE`` or ``~/.cache/dermalab``)."""
    return settings().data_dir


@dataclass
class LocalState:
    """What is on disk for one dataset."""

    path: Path
    exists: bool
    managed: bool  # downloaded by dermalab (has the marker)
    parts: dict[str, Any] = field(default_factory=dict)  # installed part -> files and checksums

    def has(self, parts: Iterable[str]) -> bool:
        return self.exists and (not self.managed or all(p in self.parts for p in parts))


def local_state(entry: DatasetEntry, root: Path | None = None) -> LocalState:
    path = (root or data_home()) / entry.name
    if not path.exists():
        return LocalState(path, False, False)
    marker = path / MARKER
    if not marker.is_file():
        return LocalState(path, True, False)
    try:
        info = json.loads(marker.read_text("utf-8"))
        parts = dict(info.get("parts", {}))
    except (OSError, ValueError, AttributeError):
        raise DataError(f"{marker}: unreadable; delete {path} and download again") from None
    return LocalState(path, True, True, parts)


def parse_location(location: str, catalog: Mapping[str, DatasetEntry]
                   ) -> tuple[DatasetEntry, str | None] | None:
    """``dataset://NAME[/PART]`` or a bare catalog name -> (entry, part); None otherwise.

    A bare name counts only when no such local path exists, so a folder called ``ham10000`` in
    the current directory is still read as that folder.
    """
    if location.startswith(SCHEME):
        name, _, part = location[len(SCHEME):].strip("/").partition("/")
        entry = catalog_entry(name, catalog)
        if part and part not in entry.parts:
            raise DataError(f"{location}: {name} has no part {part!r}; parts: "
                            f"{', '.join(entry.parts)}")
        return entry, part or None
    if location in catalog and not Path(location).exists():
        return catalog[location], None
    return None


def dataset_path(entry: DatasetEntry, part: str | None, state: LocalState) -> Path:
    """The path ``data.source`` reads: the part's ``source`` or the dataset's."""
    rel = (entry.parts[part].source if part else None) or entry.source
    return (state.path / rel) if rel not in ("", ".") else state.path
