"""The deployment profile on this machine: nginx in front of several ``dermalab serve``
workers, with PostgreSQL, SeaweedFS S3 and Redis, every part a real server on 127.0.0.1.

    .venv/bin/python scripts/deploy_local.py RUN_DIR [RUN_DIR ... --router DIR]
        [--workers 2] [--port 8080] [--state DIR]

It prints the public URL and runs until Ctrl-C, then stops everything. Needs the Debian
packages nginx, redis-server and postgresql-15, and ``pip install -e '.[deploy]'``. The same
shape on several machines (a shared PostgreSQL, S3 and Redis, one proxy) is described in
docs/deployment.md; this script is how it is tried and tested on one.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.localstack import deployment, missing  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", nargs="+")
    ap.add_argument("--router", help="image-type router (several models)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--port", type=int, default=8080, help="the proxy's port (127.0.0.1)")
    ap.add_argument("--state", help="folder for the servers' data and logs (default: temp)")
    args = ap.parse_args()
    lacking = missing()
    if lacking:
        print("error: the deployment profile needs " + ", ".join(lacking), file=sys.stderr)
        return 2
    state = Path(args.state) if args.state else Path(tempfile.mkdtemp(prefix="dermalab-"))
    extra = ("--router", args.router) if args.router else ()
    with deployment([str(Path(r).resolve()) for r in args.run_dir], state, args.workers,
                    args.port, extra) as dep:
        print(f"dermalab at {dep.url} ({args.workers} workers behind nginx; PostgreSQL, "
              f"S3 and Redis on 127.0.0.1; logs in {state}). Ctrl-C stops it.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
