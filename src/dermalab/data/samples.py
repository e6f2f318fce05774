"""The record every source produces, whatever the dataset format."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    Attributes:
        sample_id: stable id (HAM10000 ``image_id``; path relative to the root for folders;
            ``split/index`` for MedMNIST; ``row/N`` for hmnist CSVs). Split files key on it.
        label: class name after the class map.
        group: lesion/patient id; samples sharing it must stay in one split.
        path: the image file, for file-based sources.
        index: the row in :attr:`SourceData.arrays`, for array-based sources.
        meta: per-sample metadata (age, sex, localization, ...).
    """

    sample_id: str
    label: str
    group: str
    path: str | None = None
    index: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class SourceData:
    """Everything a source yields: samples, classes and a report of what it ignored.

    Attributes:
        kind: ``folder`` | ``ham10000`` | ``medmnist`` | ``hmnist`` | ``isic2019`` | ``csv``.
        location: the path the data came from.
        samples: labelled samples, in a deterministic order.
        classes: sorted class names.
        display_names: class -> readable name (e.g. ``mel`` -> ``Melanoma``).
        arrays: ``(N, H, W, 3)`` uint8 images for array sources, else ``None``.
        given_split: sample_id -> split defined by the dataset itself (MedMNIST, ``train/``
            folders), or ``None``.
        ignored: files that are not images (hidden files, other extensions): {path, reason}.
        bad: unusable inputs skipped because the user asked (``skip_bad``): {path, error}.
        fingerprint: changes whenever the underlying files change (cache key).
        warnings: data problems that do not stop a run but must be said (e.g. a class-map
            pattern that matches no class).
        conflicts: groups of byte-identical images with different labels (after the class
            map), each a list of {sample_id, label}; ``dropped`` says whether they were left out.
    """

    kind: str
    location: str
    samples: list[Sample]
    classes: list[str]
    display_names: dict[str, str] = field(default_factory=dict)
    arrays: np.ndarray | None = None
    given_split: dict[str, str] | None = None
    ignored: list[dict[str, str]] = field(default_factory=list)
    bad: list[dict[str, str]] = field(default_factory=list)
    fingerprint: str = ""
    warnings: list[str] = field(default_factory=list)
    conflicts: list[list[dict[str, str]]] = field(default_factory=list)
    conflicts_dropped: bool = False

    def class_counts(self) -> dict[str, int]:
        """Images per class, in class order."""
        counts = dict.fromkeys(self.classes, 0)
        for s in self.samples:
            counts[s.label] += 1
        return counts

    def content_hash(self, sample: Sample) -> str:
        """sha256 of the sample's bytes (file bytes, or the raw array) for duplicate checks."""
        if sample.path is not None:
            return file_sha256(sample.path)
        assert self.arrays is not None and sample.index is not None
        return hashlib.sha256(np.ascontiguousarray(self.arrays[sample.index]).tobytes()).hexdigest()


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
