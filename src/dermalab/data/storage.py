"""Where dataset locations resolve to local paths.

Only local paths are handled today. Remote URIs (``s3://``) are recognised and refused with a
clear message; the S3 sync (checksummed, resumable, cached by URI) will resolve them to a local
cache folder here, so no source reader needs to change.
"""

from __future__ import annotations

from pathlib import Path

from dermalab.errors import DataError

REMOTE_SCHEMES = ("s3://", "gs://", "http://", "https://")


def is_remote(location: str) -> bool:
    """True for a URI that names remote storage."""
    return location.lower().startswith(REMOTE_SCHEMES)


def local_path(location: str) -> Path:
    """The local path of a dataset location.

    Raises:
        DataError: for remote URIs, which this version cannot read yet.
    """
    if is_remote(location):
        raise DataError(
            f"{location}: remote datasets are not supported in this version; copy the data to a "
            "local folder and pass its path"
        )
    if location.startswith("file://"):
        location = location[len("file://"):]
    return Path(location).expanduser()
