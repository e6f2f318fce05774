"""Datasets and artifacts on S3 (or any S3-compatible server), with boto3.

``push`` and ``pull`` move a folder to and from ``s3://bucket/prefix``:

- parallel transfers (a thread pool; boto3 clients are thread-safe) with a progress bar, and
  multipart uploads above 8 MiB;
- skip-unchanged by content: every local file's S3 ETag is computed locally (MD5 for single-part
  objects, MD5 of the part MD5s for multipart, the S3 convention) and compared with the server's
  listing, so a second push sends nothing and an interrupted push resumes with what is missing;
- a checksum manifest (``_dermalab_manifest.json``: relative path -> size, sha256, ETag) written
  after a complete push, used by ``pull`` to verify every downloaded file;
- downloads go to a temporary name and are renamed only after their checksum matched, so no
  partial file ever looks complete; a file that changed on the server mid-transfer is reported;
- a final verification that every object matches its local checksum.

Credentials and endpoint come the standard AWS way (environment variables, profiles, and
``AWS_ENDPOINT_URL`` or ``--endpoint-url`` for S3-compatible servers); nothing secret is logged.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dermalab.core.errors import DataError
from dermalab.core.settings import settings

MANIFEST = "_dermalab_manifest.json"
PART_SIZE = 8 * 1024 * 1024
TMP_SUFFIX = ".dermalab-part"


class S3Error(DataError):
    """An S3 operation failed; the message says what to check."""


@dataclass(frozen=True)
class S3Uri:
    """``s3://bucket/prefix`` split into its parts (prefix without trailing slash)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        """Parse ``s3://bucket[/prefix]``."""
        if not uri.startswith("s3://"):
            raise S3Error(f"{uri}: not an s3:// URI")
        rest = uri[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise S3Error(f"{uri}: no bucket name")
        return cls(bucket, prefix.strip("/"))

    def key(self, rel: str) -> str:
        """The object key of a path relative to the prefix."""
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def make_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client; the endpoint defaults to ``AWS_ENDPOINT_URL(_S3)`` when set."""
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or settings().s3_endpoint
    cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                 read_timeout=60, max_pool_connections=32)
    session = boto3.session.Session()
    region = session.region_name or "us-east-1"
    return session.client("s3", endpoint_url=endpoint, region_name=region, config=cfg)


def explain_error(exc: Exception, where: str) -> S3Error:
    """Turn a botocore exception into a message naming the problem (never the secret)."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403"):
            return S3Error(f"{where}: S3 rejected the credentials ({code}); check "
                           "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile")
        if code in ("NoSuchBucket",):
            return S3Error(f"{where}: bucket does not exist (NoSuchBucket)")
        if code in ("PreconditionFailed", "412"):
            return S3Error(f"{where}: the object changed on the server during the transfer")
        return S3Error(f"{where}: S3 error {code}: {exc.response.get('Error', {}).get('Message')}")
    if isinstance(exc, EndpointConnectionError):
        return S3Error(f"{where}: cannot reach the S3 endpoint ({exc}); check AWS_ENDPOINT_URL "
                       "or --endpoint-url and that the server is running")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return S3Error(f"{where}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
                       "AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
    return S3Error(f"{where}: {exc}")


@dataclass
class FileDigest:
    """Size, sha256 and the S3 ETag the file would have when uploaded by :func:`push`."""

    size: int
    sha256: str
    etag: str


def digest_file(path: Path, part_size: int = PART_SIZE) -> FileDigest:
    """One read: sha256 and the S3 ETag (MD5, or MD5-of-part-MD5s ``-N`` above ``part_size``)."""
    sha = hashlib.sha256()
    whole = hashlib.md5()
    part_md5s: list[bytes] = []
    size = 0
    with open(path, "rb") as f:
        while block := f.read(part_size):
            sha.update(block)
            whole.update(block)
            part_md5s.append(hashlib.md5(block).digest())
            size += len(block)
    if size > part_size:  # boto3 uploads in parts only above the threshold
        etag = hashlib.md5(b"".join(part_md5s)).hexdigest() + f"-{len(part_md5s)}"
    else:
        etag = whole.hexdigest()
    return FileDigest(size, sha.hexdigest(), etag)


def local_files(root: Path) -> dict[str, Path]:
    """Relative posix path -> file, skipping hidden entries and transfer temporaries."""
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith(TMP_SUFFIX) or name == MANIFEST:
                continue
            full = Path(dirpath) / name
            out[full.relative_to(root).as_posix()] = full
    return out


def list_objects(client: Any, uri: S3Uri) -> dict[str, dict[str, Any]]:
    """Relative path -> {size, etag} of every object under the prefix."""
    prefix = f"{uri.prefix}/" if uri.prefix else ""
    out: dict[str, dict[str, Any]] = {}
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=uri.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if rel and not rel.endswith("/"):
                    out[rel] = {"size": int(obj["Size"]), "etag": obj["ETag"].strip('"')}
    except Exception as exc:
        raise explain_error(exc, str(uri)) from None
    return out


def _parallel(fn: Callable[[str], int], items: list[str], workers: int, total_bytes: int,
              desc: str, progress: bool) -> None:
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=desc, disable=not progress,
               leave=False)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        try:
            for n in pool.map(fn, items):
                bar.update(n)
        finally:
            bar.close()


@dataclass
class SyncResult:
    """What a push or pull did."""

    files: int
    transferred: int
    skipped: int
    bytes_transferred: int
    verified: int

    def as_dict(self) -> dict[str, int]:
        """Plain dict."""
        return dict(self.__dict__)


def push(local_dir: str | Path, uri: str, *, endpoint_url: str | None = None, workers: int = 8,
         progress: bool = True, client: Any = None) -> SyncResult:
    """Upload a folder to ``s3://bucket/prefix``, skipping objects whose ETag already matches,
    then verify every object and write the manifest.

    Raises:
        S3Error: credentials, bucket, endpoint or verification problems (named).
        DataError: the local folder does not exist.
    """
    from boto3.s3.transfer import TransferConfig

    root = Path(local_dir)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    target = S3Uri.parse(uri)
    client = client or make_client(endpoint_url)
    files = local_files(root)
    digests: dict[str, FileDigest] = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for rel, d in zip(files, pool.map(digest_file, files.values()), strict=True):
            digests[rel] = d
    remote = list_objects(client, target)
    todo = [rel for rel, d in digests.items()
            if remote.get(rel, {}).get("etag") != d.etag or remote[rel]["size"] != d.size]
    transfer = TransferConfig(multipart_threshold=PART_SIZE + 1, multipart_chunksize=PART_SIZE,
                              max_concurrency=4, use_threads=True)

    def upload(rel: str) -> int:
        try:
            client.upload_file(str(files[rel]), target.bucket, target.key(rel), Config=transfer,
                               ExtraArgs={"Metadata": {"sha256": digests[rel].sha256}})
        except Exception as exc:
            raise explain_error(exc, f"upload {files[rel]} -> {target}/{rel}") from None
        return digests[rel].size

    _parallel(upload, todo, workers, sum(digests[r].size for r in todo), f"push {target}",
              progress)
    after = list_objects(client, target)
    bad = [rel for rel, d in digests.items()
           if after.get(rel, {}).get("etag") != d.etag or after[rel]["size"] != d.size]
    if bad:
        raise S3Error(f"verification failed for {len(bad)} object(s) under {target}, e.g. "
                      f"{bad[:3]}: the server's checksum differs from the local file")
    manifest = {"version": 1, "files": {rel: {"size": d.size, "sha256": d.sha256,
                                               "etag": d.etag}
                                         for rel, d in sorted(digests.items())}}
    body = json.dumps(manifest, indent=1).encode()
    try:
        client.put_object(Bucket=target.bucket, Key=target.key(MANIFEST), Body=body,
                          ContentType="application/json")
    except Exception as exc:
        raise explain_error(exc, f"write manifest to {target}") from None
    return SyncResult(len(digests), len(todo), len(digests) - len(todo),
                      sum(digests[r].size for r in todo), len(digests))


def read_manifest(client: Any, uri: S3Uri) -> dict[str, dict[str, Any]] | None:
    """The manifest's ``files`` mapping, or ``None`` when the prefix has none."""
    from botocore.exceptions import ClientError

    try:
        obj = client.get_object(Bucket=uri.bucket, Key=uri.key(MANIFEST))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise explain_error(exc, str(uri)) from None
    except Exception as exc:
        raise explain_error(exc, str(uri)) from None
    files: dict[str, dict[str, Any]] = json.loads(obj["Body"].read())["files"]
    return files


def _write_stream(body: Iterator[bytes], tmp: Path) -> None:
    try:
        with open(tmp, "wb") as f:
            for chunk in body:
                f.write(chunk)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise DataError(f"{tmp.parent}: local disk is full while writing "
                            f"{tmp.name.removesuffix(TMP_SUFFIX)}") from None
        raise DataError(f"{tmp}: cannot write ({exc.strerror or exc})") from None


def pull(uri: str, local_dir: str | Path, *, endpoint_url: str | None = None, workers: int = 8,
         progress: bool = True, client: Any = None) -> SyncResult:
    """Download ``s3://bucket/prefix`` into a folder, skipping files that already match, and
    verifying each download against the manifest (sha256) and the listing (ETag) before it is
    renamed into place.

    Raises:
        S3Error: credentials, bucket, endpoint, an empty prefix, or a file whose content
            changed during the transfer.
        DataError: the local disk filled up (the partial file is removed).
    """
    source = S3Uri.parse(uri)
    client = client or make_client(endpoint_url)
    remote = list_objects(client, source)
    remote.pop(MANIFEST, None)
    if not remote:
        raise S3Error(f"{source}: no objects under this prefix (check the bucket and prefix)")
    manifest = read_manifest(client, source) or {}
    root = Path(local_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.rglob(f"*{TMP_SUFFIX}"):  # left by an interrupted pull
        stale.unlink()

    def expected_sha(rel: str) -> str | None:
        entry = manifest.get(rel)
        if entry and entry.get("etag") == remote[rel]["etag"]:
            return str(entry["sha256"])
        return None  # no manifest entry, or the object changed since the manifest was written

    def up_to_date(rel: str) -> bool:
        path = root / rel
        if not path.is_file() or path.stat().st_size != remote[rel]["size"]:
            return False
        d = digest_file(path)
        sha = expected_sha(rel)
        return d.etag == remote[rel]["etag"] and (sha is None or d.sha256 == sha)

    with ThreadPoolExecutor(max_workers=4) as pool:
        current = dict(zip(remote, pool.map(up_to_date, remote), strict=True))
    todo = [rel for rel, ok in current.items() if not ok]

    def download(rel: str) -> int:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + TMP_SUFFIX)
        where = f"download {source}/{rel}"
        try:
            obj = client.get_object(Bucket=source.bucket, Key=source.key(rel),
                                    IfMatch=f'"{remote[rel]["etag"]}"')
        except Exception as exc:
            raise explain_error(exc, where) from None
        try:
            _write_stream(obj["Body"].iter_chunks(1 << 20), tmp)
        except DataError:
            raise
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            raise explain_error(exc, where) from None
        d = digest_file(tmp)
        sha = expected_sha(rel)
        if d.etag != remote[rel]["etag"] or (sha is not None and d.sha256 != sha):
            tmp.unlink(missing_ok=True)
            raise S3Error(f"{where}: the downloaded bytes do not match the checksum (the file "
                          "changed on the server during the transfer?); run pull again")
        os.replace(tmp, path)
        return d.size

    _parallel(download, todo, workers, sum(remote[r]["size"] for r in todo), f"pull {source}",
              progress)
    return SyncResult(len(remote), len(todo), len(remote) - len(todo),
                      sum(remote[r]["size"] for r in todo), len(remote))


def cache_folder(uri: str, endpoint_url: str | None, cache_root: Path) -> Path:
    """Where an ``s3://`` dataset is synced locally (keyed by endpoint and URI)."""
    endpoint = endpoint_url or settings().s3_endpoint or "aws"
    key = hashlib.sha256(f"{endpoint}\0{uri}".encode()).hexdigest()[:16]
    name = S3Uri.parse(uri).prefix.rsplit("/", 1)[-1] or S3Uri.parse(uri).bucket
    return cache_root / "s3" / f"{name}-{key}"


def sync_dataset(uri: str, cache_root: Path, endpoint_url: str | None = None,
                 progress: bool = True) -> Path:
    """Pull an ``s3://`` dataset into the local cache (reusing unchanged files); returns the
    local path: the folder, or the file when the URI names a single object."""
    target = S3Uri.parse(uri)
    client = make_client(endpoint_url)
    folder = cache_folder(uri, endpoint_url, cache_root)
    remote = list_objects(client, target)
    if not remote and target.prefix:
        # The URI may name one object (e.g. s3://bucket/dermamnist.npz).
        parent, _, name = target.prefix.rpartition("/")
        parent_uri = S3Uri(target.bucket, parent)
        siblings = list_objects(client, parent_uri)
        if name in siblings:
            single = folder / name
            if not (single.is_file() and digest_file(single).etag == siblings[name]["etag"]):
                _pull_one(client, parent_uri, name, folder, siblings[name]["etag"])
            return single
    pull(uri, folder, client=client, progress=progress)
    return folder


def _pull_one(client: Any, uri: S3Uri, rel: str, folder: Path, etag: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (rel + TMP_SUFFIX)
    try:
        obj = client.get_object(Bucket=uri.bucket, Key=uri.key(rel), IfMatch=f'"{etag}"')
    except Exception as exc:
        raise explain_error(exc, f"download {uri}/{rel}") from None
    _write_stream(obj["Body"].iter_chunks(1 << 20), tmp)
    if digest_file(tmp).etag != etag:
        tmp.unlink(missing_ok=True)
        raise S3Error(f"download {uri}/{rel}: checksum mismatch (changed during transfer?)")
    os.replace(tmp, folder / rel)
