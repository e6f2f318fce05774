"""Where dataset locations resolve to local paths.

Local paths are used as they are. A named dataset (``ham10000``, ``dataset://dermamnist/128``)
resolves to its copy under ``$DERMALAB_DATA``, downloaded on first use
(:mod:`dermalab.data.download`). ``s3://bucket/prefix`` datasets are synced into the local
cache (``$DERMALAB_CACHE/s3/<name>-<hash of endpoint and URI>``) with checksums, reusing
unchanged files on the next run, and the cached copy is read like any local dataset. Other
remote schemes are refused with a clear message.
"""

from __future__ import annotations

from pathlib import Path

from dermalab.core.config import DATASET_WORD
from dermalab.core.errors import DataError

UNSUPPORTED_SCHEMES = ("gs://", "http://", "https://", "az://", "abfs://")


def is_remote(location: str) -> bool:
    """True for a URI that names remote storage."""
    return location.lower().startswith(("s3://", *UNSUPPORTED_SCHEMES))


def local_path(location: str, *, progress: bool = True) -> Path:
    """The local path of a dataset location, syncing ``s3://`` URIs into the cache first.

    Raises:
        DataError: for remote schemes other than ``s3://``, or S3 problems (named).
    """
    if location.lower().startswith("s3://"):
        from dermalab.data.cache import default_cache_dir
        from dermalab.data.s3 import sync_dataset

        return sync_dataset(location, default_cache_dir(), progress=progress)
    if location.lower().startswith(UNSUPPORTED_SCHEMES):
        raise DataError(
            f"{location}: only local paths and s3:// URIs are supported; copy the data to a "
            "local folder or an S3 bucket"
        )
    if location.startswith("file://"):
        location = location[len("file://"):]
    path = Path(location).expanduser()
    if location.startswith("dataset://") or (not path.exists() and is_dataset_word(location)):
        from dermalab.data.download import resolve_dataset

        named = resolve_dataset(location, progress=progress)
        if named is not None:
            return named
    return path


def is_dataset_word(location: str) -> bool:
    """A bare word that may name a catalog dataset (``ham10000``, ``isic2019``)."""
    return bool(DATASET_WORD.fullmatch(location))
