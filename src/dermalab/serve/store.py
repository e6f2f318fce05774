"""Analysis history, users and sessions in SQL (SQLite by default, PostgreSQL by URL) via
SQLAlchemy, with the uploaded images on disk or in S3.

Every analysis has an owner (a signed-up user or an anonymous device); every query of the
history takes the owner, so one person's analyses are never read, listed or deleted through
another's session. ``owner=OPEN`` (the single-user ``--open`` mode) is the only way to see
rows regardless of owner. The schema is created and upgraded by Alembic
(:mod:`dermalab.serve.migrations`), so a database written by an older version is upgraded in
place at start-up.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Final

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from dermalab.core.atomic import atomic_write_bytes


class Base(DeclarativeBase):
    """Declarative base."""


class User(Base):
    """A person with an account, or an anonymous device (``email`` is None)."""

    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320), unique=True, nullable=True)
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    anonymous: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuthToken(Base):
    """A session: only the SHA-256 of the secret is stored, so a leaked database grants no
    session. ``csrf`` is the token a cookie session must echo in ``X-CSRF-Token``."""

    __tablename__ = "auth_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(36), ForeignKey("users.id", ondelete="CASCADE"),
                                         index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Analysis(Base):
    """One analysed photo. ``image_ref`` is the photo's key relative to the image store."""

    __tablename__ = "analyses"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    verdict: Mapped[str] = mapped_column(String(16))
    referral: Mapped[str | None] = mapped_column(String(16), nullable=True)
    image_ref: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(Integer)
    result_json: Mapped[str] = mapped_column(Text)
    # The owner must exist (migration 0004): an upload racing its owner's deletion fails.
    owner_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", name="fk_analyses_owner_id_users"), nullable=True,
        index=True)
    spot_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)


class Spot(Base):
    """A lesion one person photographs again over time, by the name they gave it."""

    __tablename__ = "spots"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", name="fk_spots_owner_id_users"), nullable=True,
        index=True)
    name: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def spot_key(name: str) -> str:
    """What makes two spot names the same spot: case and runs of spaces do not count."""
    return " ".join(name.split()).casefold()


class _Open:
    """The owner of ``--open`` mode: every row, no accounts."""

    def __repr__(self) -> str:
        return "OPEN"


OPEN: Final = _Open()
Owner = str | _Open


class ImageStore:
    """Uploaded images in a local folder or under an ``s3://bucket/prefix``, by relative key.

    Keys are plain names (``<uuid>.jpg``): a key can never point outside the store, and a
    copied run directory deletes only its own photos.
    """

    def __init__(self, location: str) -> None:
        self.location = location
        self.s3 = location.startswith("s3://")
        if self.s3:
            from dermalab.data.s3 import S3Uri, make_client

            self.uri = S3Uri.parse(location)
            self.client = make_client()
        else:
            self.root = Path(location)
            self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _check(key: str) -> str:
        p = PurePosixPath(key)
        if p.is_absolute() or len(p.parts) != 1 or key in ("", ".", ".."):
            raise ValueError(f"not an image store key: {key!r}")
        return key

    def put(self, key: str, data: bytes) -> str:
        """Store bytes under ``key``; returns the key (what the database keeps)."""
        key = self._check(key)
        if self.s3:
            self.client.put_object(Bucket=self.uri.bucket, Key=self.uri.key(key), Body=data)
        else:
            atomic_write_bytes(self.root / key, data)
        return key

    def read(self, key: str) -> bytes:
        """The stored bytes of ``key``.

        Raises:
            FileNotFoundError: no such photo (on disk or in the bucket).
        """
        key = self._check(key)
        if self.s3:
            try:
                obj = self.client.get_object(Bucket=self.uri.bucket, Key=self.uri.key(key))
            except self.client.exceptions.NoSuchKey:
                raise FileNotFoundError(key) from None
            return bytes(obj["Body"].read())
        return (self.root / key).read_bytes()

    def delete(self, key: str) -> None:
        """Remove a stored image (missing is fine)."""
        key = self._check(key)
        if self.s3:
            self.client.delete_object(Bucket=self.uri.bucket, Key=self.uri.key(key))
        else:
            (self.root / key).unlink(missing_ok=True)

    def sweep_temporaries(self, older_than_s: float = 0.0) -> int:
        """Delete the temporaries of writes a crash cut short (``.<key>.<pid>-<tid>.tmp`` on
        disk; S3 puts are atomic and leave none) older than ``older_than_s``."""
        if self.s3:
            return 0
        import time

        cutoff, n = time.time() - older_than_s, 0
        for p in self.root.glob(".*.tmp"):
            if p.is_file() and p.stat().st_mtime <= cutoff:
                p.unlink(missing_ok=True)
                n += 1
        return n

    def list_keys(self) -> list[str]:
        """Every stored key (for tests and the orphan sweep)."""
        if self.s3:
            prefix = self.uri.key("")
            out: list[str] = []
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.uri.bucket, Prefix=prefix):
                out += [o["Key"][len(prefix):] for o in page.get("Contents", [])]
            return sorted(out)
        return sorted(p.name for p in self.root.iterdir() if p.is_file()
                      and not p.name.startswith("."))


def _sqlite_foreign_keys(dbapi_conn: Any, _record: Any) -> None:
    """SQLite checks foreign keys only when asked, per connection: an analysis or spot of a
    deleted owner is then refused as on PostgreSQL."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_wal(dbapi_conn: Any, _record: Any) -> None:
    """Write-ahead log with ``synchronous=NORMAL``: readers never wait for the writer, and a
    commit no longer waits for an fsync (4 of the service's 44 ms per upload); a killed
    process still loses nothing committed, a power cut at most the last commits."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Any:
    """An engine for ``url``, with the schema created or upgraded to the newest revision."""
    from dermalab.serve.migrations import upgrade

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        db_path = url.split(":///", 1)[1] if ":///" in url else ""
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_foreign_keys)
    if url.startswith("sqlite") and ":memory:" not in url and url not in ("sqlite://",
                                                                          "sqlite:///"):
        event.listen(engine, "connect", _sqlite_wal)
    upgrade(engine)
    return engine


class HistoryStore:
    """Thread-safe history: one session per call; writes serialised for SQLite."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine  # from make_engine: shared with the account store
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write = threading.Lock()

    @staticmethod
    def _mine(stmt: Any, owner: Owner, table: Any = Analysis) -> Any:
        return stmt if owner is OPEN else stmt.where(table.owner_id == owner)

    def add(self, row: Analysis) -> None:
        """Insert one analysis."""
        with self._write, Session(self.engine) as s, s.begin():
            s.add(row)

    def exists(self, analysis_id: str) -> bool:
        """Whether the analysis ``analysis_id`` is stored (whoever owns it)."""
        with self.sessions() as s:
            return s.get(Analysis, analysis_id) is not None

    def get(self, analysis_id: str, owner: Owner) -> Analysis | None:
        """One of ``owner``'s analyses, or ``None`` (also for another owner's id)."""
        with self.sessions() as s:
            return s.scalars(self._mine(select(Analysis).where(Analysis.id == analysis_id),
                                        owner)).first()

    def page(self, limit: int, offset: int, owner: Owner) -> tuple[list[Analysis], int]:
        """``owner``'s analyses, newest first, and their count."""
        with self.sessions() as s:
            total = s.scalar(self._mine(select(func.count()).select_from(Analysis), owner)) or 0
            rows = s.scalars(self._mine(select(Analysis), owner)
                             .order_by(Analysis.created_at.desc(), Analysis.id)
                             .limit(limit).offset(offset)).all()
            return list(rows), int(total)

    def all_of(self, owner: str) -> list[Analysis]:
        """Every analysis of ``owner``, oldest first (data export)."""
        with self.sessions() as s:
            return list(s.scalars(select(Analysis).where(Analysis.owner_id == owner)
                                  .order_by(Analysis.created_at, Analysis.id)).all())

    def delete(self, analysis_id: str, owner: Owner) -> Analysis | None:
        """Delete and return one of ``owner``'s analyses (``None`` if there is none)."""
        with self._write, Session(self.engine) as s, s.begin():
            row = s.scalars(self._mine(select(Analysis).where(Analysis.id == analysis_id),
                                       owner)).first()
            if row is not None:
                s.delete(row)
            return row

    def delete_all_of(self, owner: str) -> list[Analysis]:
        """Delete and return every analysis of ``owner``, and every spot they named."""
        with self._write, Session(self.engine) as s, s.begin():
            rows = list(s.scalars(select(Analysis).where(Analysis.owner_id == owner)).all())
            s.execute(delete(Analysis).where(Analysis.owner_id == owner))
            s.execute(delete(Spot).where(Spot.owner_id == owner))
            return rows

    def delete_older_than(self, cutoff: datetime) -> list[Analysis]:
        """Delete and return every analysis created before ``cutoff`` (retention), and the
        spots left with no analysis (a spot's name is health data too)."""
        with self._write, Session(self.engine) as s, s.begin():
            rows = list(s.scalars(select(Analysis).where(Analysis.created_at < cutoff)).all())
            s.execute(delete(Analysis).where(Analysis.id.in_([r.id for r in rows])))
            used = select(Analysis.spot_id).where(Analysis.spot_id.is_not(None))
            s.execute(delete(Spot).where(Spot.created_at < cutoff, Spot.id.not_in(used)))
            return rows

    def reassign(self, old_owner: str, new_owner: str) -> int:
        """Move every analysis and spot of ``old_owner`` to ``new_owner`` (a spot whose name
        the new owner already uses is merged into theirs); returns how many analyses."""
        with self._write, Session(self.engine) as s, s.begin():
            theirs = {spot_key(sp.name): sp.id for sp in
                      s.scalars(select(Spot).where(Spot.owner_id == new_owner))}
            for sp in list(s.scalars(select(Spot).where(Spot.owner_id == old_owner))):
                same = theirs.get(spot_key(sp.name))
                if same is None:
                    sp.owner_id = new_owner
                else:
                    s.execute(update(Analysis).where(Analysis.spot_id == sp.id)
                              .values(spot_id=same))
                    s.delete(sp)
            res = s.execute(update(Analysis).where(Analysis.owner_id == old_owner)
                            .values(owner_id=new_owner))
            return int(res.rowcount or 0)  # type: ignore[attr-defined]

    # -- spots ---------------------------------------------------------------------------------
    def spot_named(self, name: str, owner: Owner) -> Spot:
        """``owner``'s spot called ``name`` (see :func:`spot_key`), created if new."""
        key = spot_key(name)
        with self._write, Session(self.engine, expire_on_commit=False) as s, s.begin():
            # Compared in Python: SQLite's lower() folds ASCII only (a person has few spots).
            for sp in s.scalars(self._mine(select(Spot), owner, Spot)):
                if spot_key(sp.name) == key:
                    return sp
            sp = Spot(id=str(uuid.uuid4()), name=" ".join(name.split()), created_at=now(),
                      owner_id=None if owner is OPEN else str(owner))
            s.add(sp)
            return sp

    def spots(self, owner: Owner) -> list[tuple[Spot, int, datetime | None]]:
        """``owner``'s spots with their number of analyses and latest date, latest first."""
        with self.sessions() as s:
            stmt = (self._mine(select(Spot, func.count(Analysis.id),
                                      func.max(Analysis.created_at)), owner, Spot)
                    .outerjoin(Analysis, Analysis.spot_id == Spot.id)
                    .group_by(Spot.id, Spot.owner_id, Spot.name, Spot.created_at))
            rows = [(sp, int(n), last) for sp, n, last in s.execute(stmt).all()]
        return sorted(rows, key=lambda r: (r[2] or r[0].created_at), reverse=True)

    def spot(self, spot_id: str, owner: Owner) -> tuple[Spot, list[Analysis]] | None:
        """One of ``owner``'s spots and its analyses, oldest first (None for anyone else's)."""
        with self.sessions() as s:
            sp = s.scalars(self._mine(select(Spot).where(Spot.id == spot_id), owner, Spot)
                           ).first()
            if sp is None:
                return None
            rows = s.scalars(select(Analysis).where(Analysis.spot_id == sp.id)
                             .order_by(Analysis.created_at, Analysis.id)).all()
            return sp, list(rows)

    def spot_names(self, owner: Owner) -> dict[str, str]:
        """Spot id -> name for ``owner``'s spots."""
        with self.sessions() as s:
            return {sp.id: sp.name for sp in s.scalars(self._mine(select(Spot), owner, Spot))}

    def without_photo(self, photos: set[str], before: datetime) -> list[Analysis]:
        """Delete and return analyses created before ``before`` whose photo is not in
        ``photos`` (an upload that crashed between the row and the photo)."""
        with self._write, Session(self.engine) as s, s.begin():
            # an empty key is an analysis whose photo was never to be kept (not skin)
            rows = [r for r in s.scalars(select(Analysis).where(Analysis.created_at < before))
                    if r.image_ref and r.image_ref not in photos]
            if rows:
                s.execute(delete(Analysis).where(Analysis.id.in_([r.id for r in rows])))
            return rows

    def image_refs(self) -> set[str]:
        """Every photo key the history refers to (the orphan sweep)."""
        with self.sessions() as s:
            return set(s.scalars(select(Analysis.image_ref)).all()) - {""}


def now() -> datetime:
    """Timezone-aware UTC now."""
    return datetime.now(UTC)
